use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let config = spm_scoring::Config::parse();
    spm_server::process::run(|| spm_scoring::run(config))
}
