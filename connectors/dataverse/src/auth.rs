//! Bearer tokens from Microsoft Entra ID for the Dataverse client: the shared adapter in
//! `presync-entra`, used with the environment URL + `/.default` as its scope.

pub use presync_entra::EntraCredentials;
