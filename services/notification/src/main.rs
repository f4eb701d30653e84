use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let config = spm_notification::Config::parse();
    spm_server::process::run(|| spm_notification::run(config))
}
