//! The Dataverse Web API client: the two CCaaS presence APIs, the OData reads the reconciler and
//! the presence catalog need, and everything around them (tokens, impersonation, the per-user
//! service-protection limit, `Retry-After`, one token refresh on 401). Failures come back
//! classified as [`ConnectorError`].

use std::sync::Arc;
use std::time::Duration;

pub use presync_engine::remote::Credentials;
use presync_engine::remote::{parse_retry_after, SlidingWindow};
use presync_engine::{ConnectorError, Millis};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Caller, CallerHeader, DataverseConfig, GetPresenceForm};
use crate::mapping::{BaseStatus, PresenceEntry};
use crate::time::parse_iso8601;

/// An agent as the CCaaS APIs need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// `systemuserid`.
    pub systemuser_id: String,
    /// `systemuser.azureactivedirectoryobjectid`, when known (for `CallerObjectId`).
    pub aad_object_id: Option<String>,
}

/// One row of `msdyn_agentstatuses` with its presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatusRow {
    pub agent_status_id: String,
    pub agent_id: String,
    pub presence_id: Option<String>,
    pub modified_on: Option<Millis>,
    pub modified_by: Option<String>,
    pub logged_in: Option<bool>,
    pub row_version: Option<i64>,
    /// `msdyn_availableunitscapacity`.
    pub capacity: Option<i64>,
}

/// What `CCaaS_GetPresence` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceInfo {
    #[serde(rename = "AgentId")]
    pub agent_id: Option<String>,
    #[serde(rename = "PresenceId")]
    pub presence_id: Option<String>,
    #[serde(rename = "CurrentPresenceStatusInfo")]
    pub status_info: Option<String>,
    #[serde(rename = "ActiveBrowserSessions")]
    pub active_browser_sessions: Option<i64>,
}

/// The Dataverse client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DataverseClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: String,
    credentials: Arc<dyn Credentials>,
    config: DataverseConfig,
    limiter: SlidingWindow,
}

impl DataverseClient {
    /// A client for the environment in `config`.
    pub fn new(
        config: DataverseConfig,
        credentials: Arc<dyn Credentials>,
    ) -> Result<Self, ConnectorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .map_err(|e| ConnectorError::transient(format!("HTTP client: {e}")))?;
        let base = format!(
            "{}{}",
            config.org_url.trim_end_matches('/'),
            config.api_path.trim_end_matches('/')
        );
        let limiter = SlidingWindow::new(
            config.rate_limit,
            Duration::from_secs(config.rate_window_secs),
        );
        Ok(DataverseClient {
            inner: Arc::new(Inner {
                http,
                base,
                credentials,
                config,
                limiter,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DataverseConfig {
        &self.inner.config
    }

    /// `POST CCaaS_ModifyAgentPresence`: set an agent's presence.
    pub async fn modify_presence(
        &self,
        agent: &Agent,
        presence_id: &str,
    ) -> Result<(), ConnectorError> {
        let caller = match &self.inner.config.impersonation.caller {
            Caller::Application => None,
            Caller::Supervisor { id } => Some(id.clone()),
            Caller::Agent => Some(self.agent_caller(agent)?),
        };
        let body = serde_json::json!({
            "ApiVersion": "1.0",
            "AgentId": agent.systemuser_id,
            "PresenceId": presence_id,
        });
        let url = format!("{}/CCaaS_ModifyAgentPresence", self.inner.base);
        self.send(Method::POST, &url, caller.as_deref(), Some(&body))
            .await?;
        Ok(())
    }

    /// `CCaaS_GetPresence` impersonating the agent.
    pub async fn get_presence(&self, agent: &Agent) -> Result<PresenceInfo, ConnectorError> {
        let url = match self.inner.config.get_presence_form {
            GetPresenceForm::Function => format!(
                "{}/CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'",
                self.inner.base
            ),
            GetPresenceForm::Bare => format!("{}/CCaaS_GetPresence", self.inner.base),
        };
        let caller = self.agent_caller(agent)?;
        let v = self.send(Method::GET, &url, Some(&caller), None).await?;
        serde_json::from_value(v).map_err(|e| ConnectorError::Rejected {
            message: format!("CCaaS_GetPresence answered an unexpected body: {e}"),
        })
    }

    /// Every row of `msdyn_agentstatuses` with its presence, following `@odata.nextLink`, each
    /// handed to `take` as its page arrives: a whole environment's rows are never held at once
    /// (100,000 rows as JSON values would take ~200 MB, and as rows ~60 MB).
    pub async fn each_agent_status(
        &self,
        mut take: impl FnMut(AgentStatusRow),
    ) -> Result<(), ConnectorError> {
        let url = format!(
            "{}/msdyn_agentstatuses?{AGENT_STATUS_QUERY}",
            self.inner.base
        );
        self.read_all_pages(url, |rows| {
            for r in rows {
                take(agent_status_row(r)?);
            }
            Ok(())
        })
        .await
    }

    /// One `msdyn_agentstatus` row (the read-back of a size-exceeded webhook).
    pub async fn agent_status(&self, id: &str) -> Result<AgentStatusRow, ConnectorError> {
        let url = format!(
            "{}/msdyn_agentstatuses({})?{AGENT_STATUS_QUERY}",
            self.inner.base,
            guid(id)?
        );
        let v = self.send(Method::GET, &url, None, None).await?;
        agent_status_row(&v)
    }

    /// The presence catalog (`msdyn_presences`).
    pub async fn presences(&self) -> Result<Vec<PresenceEntry>, ConnectorError> {
        let url = format!(
            "{}/msdyn_presences?$select=msdyn_presenceid,msdyn_name,msdyn_presencestatustext,msdyn_basepresencestatus",
            self.inner.base
        );
        let mut rows = Vec::new();
        self.read_all_pages(url, |page| {
            rows.extend_from_slice(page);
            Ok(())
        })
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (Some(id), Some(base)) = (
                r.get("msdyn_presenceid").and_then(Value::as_str),
                r.get("msdyn_basepresencestatus")
                    .and_then(Value::as_i64)
                    .and_then(BaseStatus::from_option),
            ) else {
                continue;
            };
            let name = r
                .get("msdyn_name")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned();
            out.push(PresenceEntry {
                id: id.to_ascii_lowercase(),
                text: r
                    .get("msdyn_presencestatustext")
                    .and_then(Value::as_str)
                    .map_or_else(|| name.clone(), str::to_owned),
                name,
                base,
            });
        }
        Ok(out)
    }

    /// The Entra object id of a system user (for directory discovery).
    pub async fn aad_object_id(
        &self,
        systemuser_id: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let url = format!(
            "{}/systemusers({})?$select=azureactivedirectoryobjectid,fullname",
            self.inner.base,
            guid(systemuser_id)?
        );
        let v = self.send(Method::GET, &url, None, None).await?;
        Ok(v.get("azureactivedirectoryobjectid")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    fn agent_caller(&self, agent: &Agent) -> Result<String, ConnectorError> {
        match self.inner.config.impersonation.header {
            CallerHeader::MscrmCallerId => Ok(agent.systemuser_id.clone()),
            CallerHeader::CallerObjectId => {
                agent
                    .aad_object_id
                    .clone()
                    .ok_or_else(|| ConnectorError::Rejected {
                        message: format!(
                    "agent {} has no Entra object id, which the CallerObjectId header needs",
                    agent.systemuser_id
                ),
                    })
            }
        }
    }

    async fn read_all_pages(
        &self,
        first: String,
        mut take: impl FnMut(&[Value]) -> Result<(), ConnectorError>,
    ) -> Result<(), ConnectorError> {
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !url.starts_with(&self.inner.base) {
                return Err(ConnectorError::Rejected {
                    message: "@odata.nextLink points outside the environment".to_owned(),
                });
            }
            let page = self.send(Method::GET, &url, None, None).await?;
            if let Some(rows) = page.get("value").and_then(Value::as_array) {
                take(rows)?;
            }
            next = page
                .get("@odata.nextLink")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Ok(())
    }

    /// One request, with the client-side limit, the bearer token, one refresh on 401, and
    /// errors classified.
    async fn send(
        &self,
        method: Method,
        url: &str,
        caller: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ConnectorError> {
        self.inner.limiter.acquire(caller.unwrap_or("")).await;
        let mut refreshed = false;
        loop {
            let token = self.inner.credentials.bearer().await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), url)
                .bearer_auth(token)
                .header("Accept", "application/json")
                .header("OData-MaxVersion", "4.0")
                .header("OData-Version", "4.0")
                .header(
                    "Prefer",
                    format!("odata.maxpagesize={}", self.inner.config.page_size),
                );
            if let Some(c) = caller {
                req = req.header(self.inner.config.impersonation.header.name(), c);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Err(network_error(&method, url, e)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                self.inner.credentials.invalidate();
                refreshed = true;
                continue;
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| ConnectorError::Rejected {
                    message: format!("{} answered a body that is not JSON: {e}", path_of(url)),
                });
            }
            return Err(classify(&method, url, status, retry_after, &text, caller));
        }
    }
}

const AGENT_STATUS_QUERY: &str = "$select=msdyn_agentstatusid,_msdyn_agentid_value,msdyn_isagentloggedin,\
msdyn_presencemodifiedon,msdyn_presencemodifiedonwithmilliseconds,msdyn_presencemodifiedby,versionnumber,\
msdyn_availableunitscapacity\
&$expand=msdyn_currentpresenceid($select=msdyn_presenceid,msdyn_name,msdyn_basepresencestatus,msdyn_presencestatustext)";

fn agent_status_row(v: &Value) -> Result<AgentStatusRow, ConnectorError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(agent_status_id), Some(agent_id)) =
        (s("msdyn_agentstatusid"), s("_msdyn_agentid_value"))
    else {
        return Err(ConnectorError::Rejected {
            message: "an msdyn_agentstatus row without its id or agent".to_owned(),
        });
    };
    let presence_id = v
        .get("msdyn_currentpresenceid")
        .and_then(|p| p.get("msdyn_presenceid"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let modified_on = s("msdyn_presencemodifiedonwithmilliseconds")
        .or_else(|| s("msdyn_presencemodifiedon"))
        .and_then(|t| parse_iso8601(&t));
    let row_version = match v.get("versionnumber") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(t)) => t.parse().ok(),
        _ => None,
    };
    Ok(AgentStatusRow {
        agent_status_id,
        agent_id: agent_id.to_ascii_lowercase(),
        presence_id,
        modified_on,
        modified_by: s("msdyn_presencemodifiedby"),
        logged_in: v.get("msdyn_isagentloggedin").and_then(Value::as_bool),
        row_version,
        capacity: v
            .get("msdyn_availableunitscapacity")
            .and_then(Value::as_i64),
    })
}

/// A GUID for a URL key: hex digits and dashes only.
fn guid(id: &str) -> Result<&str, ConnectorError> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(id)
    } else {
        Err(ConnectorError::Rejected {
            message: format!("{id:?} is not a GUID"),
        })
    }
}

/// The path of a URL without its query, for messages.
fn path_of(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

fn network_error(method: &Method, url: &str, e: reqwest::Error) -> ConnectorError {
    let (connect, e) = (e.is_connect(), e.without_url());
    let what = format!("{method} {}: {e}", path_of(url));
    if connect {
        ConnectorError::transient(what)
    } else if *method == Method::POST {
        // The request may have been processed before the connection broke.
        ConnectorError::unknown_outcome(what)
    } else {
        ConnectorError::transient(what)
    }
}

/// `CCaaS_ModifyAgentPresence`, whose refusals mean more than a bad request.
const MODIFY: &str = "CCaaS_ModifyAgentPresence";

/// Map an HTTP failure to the engine's classes. `caller` is the user the request impersonated
/// (`None`: the application user itself), named in what to grant when a role is missing.
fn classify(
    method: &Method,
    url: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    caller: Option<&str>,
) -> ConnectorError {
    let (code, text) = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            let code = e.get("code").and_then(Value::as_str).unwrap_or("");
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            Some((code.to_owned(), msg.to_owned()))
        })
        .unwrap_or_default();
    let detail = format!("{code} {text}");
    let message = format!(
        "{method} {} answered {status} {}",
        path_of(url),
        detail.trim()
    )
    .trim()
    .to_owned();
    let modify = path_of(url) == MODIFY;
    let impersonation = matches!(
        code.as_str(),
        "CannotActOnBehalfOfAnotherUser" | "CannotAddOrActonBehalfAnotherUserPrivilege"
    );
    match status.as_u16() {
        429 => ConnectorError::RateLimited {
            retry_after,
            message,
        },
        401 => ConnectorError::Unauthorized { message },
        403 if impersonation => ConnectorError::Forbidden {
            message,
            remedy: "give presync's application user the prvActOnBehalfOfAnotherUser privilege \
                     (the Delegate security role), which impersonation needs"
                .to_owned(),
        },
        // The Supervisor-only rule of 2026-05-07: 403 by a practitioner's report, 405 ("API not
        // allowed") by the documented codes (dataverse.md §5.2).
        403 | 405 if modify => ConnectorError::Forbidden {
            message,
            remedy: format!(
                "{MODIFY} needs the Omnichannel Supervisor role (since 2026-05-07): grant it to {}",
                match caller {
                    Some(c) => format!("the user presync acts as, {c} (dataverse.impersonation)"),
                    None => "presync's application user".to_owned(),
                }
            ),
        },
        // An agent who is not signed in cannot be given a presence (a practitioner's report).
        404 if modify => ConnectorError::NotSignedIn { message },
        503 => ConnectorError::transient(message),
        500 | 502 | 504 if *method == Method::POST => ConnectorError::unknown_outcome(message),
        500..=599 => ConnectorError::transient(message),
        _ => ConnectorError::Rejected { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_are_classified() {
        let u = "https://x/api/data/v9.2/CCaaS_ModifyAgentPresence";
        let post = Method::POST;
        let e = classify(
            &post,
            u,
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            "",
            None,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_transient());
        let e = classify(&post, u, StatusCode::SERVICE_UNAVAILABLE, None, "", None);
        assert!(e.is_transient() && !e.outcome_unknown());
        let e = classify(&post, u, StatusCode::INTERNAL_SERVER_ERROR, None, "", None);
        assert!(e.outcome_unknown());
        let e = classify(
            &Method::GET,
            u,
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "",
            None,
        );
        assert!(e.is_transient() && !e.outcome_unknown());
        let e = classify(
            &post,
            u,
            StatusCode::NOT_FOUND,
            None,
            r#"{"error":{"code":"0x80040217","message":"agent not signed in"}}"#,
            None,
        );
        assert!(matches!(e, ConnectorError::NotSignedIn { .. }), "{e:?}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("agent not signed in"), "{e}");
        assert!(matches!(
            classify(&post, u, StatusCode::UNAUTHORIZED, None, "", None),
            ConnectorError::Unauthorized { .. }
        ));
    }

    #[test]
    fn a_missing_supervisor_role_is_forbidden_and_names_who_to_grant_it_to() {
        let u = "https://x/api/data/v9.2/CCaaS_ModifyAgentPresence";
        let body = r#"{"error":{"code":"0x80040220","message":"missing the Omnichannel Supervisor role"}}"#;
        for status in [StatusCode::FORBIDDEN, StatusCode::METHOD_NOT_ALLOWED] {
            let e = classify(
                &Method::POST,
                u,
                status,
                None,
                body,
                Some("cc05cf62-6242-ee11-be6e-6045bdd7ac2c"),
            );
            let ConnectorError::Forbidden { remedy, .. } = &e else {
                panic!("{status}: {e:?}");
            };
            assert!(
                remedy.contains("Omnichannel Supervisor") && remedy.contains("cc05cf62"),
                "{remedy}"
            );
            assert!(!e.is_transient());
        }
        let app = classify(&Method::POST, u, StatusCode::FORBIDDEN, None, body, None);
        assert!(app.to_string().contains("application user"), "{app}");
        // Elsewhere a 404 is a plain refusal.
        let get = "https://x/api/data/v9.2/msdyn_agentstatuses(1)";
        assert!(matches!(
            classify(&Method::GET, get, StatusCode::NOT_FOUND, None, "", None),
            ConnectorError::Rejected { .. }
        ));
        let impersonation = r#"{"error":{"code":"CannotActOnBehalfOfAnotherUser","message":"x"}}"#;
        let e = classify(
            &Method::GET,
            get,
            StatusCode::FORBIDDEN,
            None,
            impersonation,
            None,
        );
        assert!(e.to_string().contains("prvActOnBehalfOfAnotherUser"), "{e}");
    }

    #[test]
    fn urls_only_take_guids() {
        assert!(guid("efdeb843-c07a-e811-8162-000d3aa11f50").is_ok());
        assert!(guid("x') or 1=1").is_err());
        assert!(guid("").is_err());
    }
}
