use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spm_incentive::run(spm_incentive::Config::parse()).await
}
