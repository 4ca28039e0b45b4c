//! Placeholder until the delivery worker lands (sr-delivery branch).
use sqlx::SqlitePool;
#[derive(Clone, Default)]
pub struct DeliveryHandle(std::sync::Arc<tokio::sync::Notify>);
impl DeliveryHandle {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}
pub async fn for_study(_p: &SqlitePool, _uid: &str) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    Ok(vec![])
}
pub async fn list_all(_p: &SqlitePool, _n: i64) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    Ok(vec![])
}
