use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let config = spm_connect::Config::parse();
    spm_server::process::run(|| spm_connect::run(config))
}
