//! `presync soak`: being written (issue 6).

use clap::Args;

#[derive(Debug, Args)]
pub struct SoakArgs {}

pub async fn run(_args: SoakArgs) -> anyhow::Result<bool> {
    anyhow::bail!("presync soak is not written yet")
}
