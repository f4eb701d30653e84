#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spm_portal::main().await
}
