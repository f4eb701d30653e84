use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spm_ingest::run(spm_ingest::Config::parse()).await
}
