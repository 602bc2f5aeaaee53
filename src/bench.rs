//! `presync bench`: being written (issue 6).

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<bool> {
    anyhow::bail!("presync bench is not written yet")
}
