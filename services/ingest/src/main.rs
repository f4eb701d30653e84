use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let config = spm_ingest::Config::parse();
    spm_server::process::run(|| spm_ingest::run(config))
}
