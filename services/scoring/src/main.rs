use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spm_scoring::run(spm_scoring::Config::parse()).await
}
