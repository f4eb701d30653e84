use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spm_notification::run(spm_notification::Config::parse()).await
}
