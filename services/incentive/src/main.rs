use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let config = spm_incentive::Config::parse();
    spm_server::process::run(|| spm_incentive::run(config))
}
