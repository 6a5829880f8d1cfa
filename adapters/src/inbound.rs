//! Stored inbound deliveries (GitHub's deliveries, Slack's events): whoever handles one, the
//! request that stored it or the sweep, claims it first (a lease), so the two never both
//! handle it; the sweep runs at start (what a restart left) and every minute (what another
//! server left when it died). Decisions 0009 and 0015.

use std::future::Future;
use std::time::Duration;

use airlock_core::store::Inbound;
use airlock_core::Store;

/// How long a claimed delivery is the claimant's: far longer than handling one takes, so a
/// delivery is never handled twice; a crashed server's are handled this long after.
pub const CLAIM_LEASE_MS: i64 = 10 * 60 * 1000;
/// How often deliveries nobody handled are looked for.
pub const SWEEP: Duration = Duration::from_secs(60);

/// A name for this process as a claimant: new per start, so a claim left by a crashed
/// process is not mistaken for a live one.
pub fn claimant(provider: &str) -> String {
    format!(
        "{provider}:{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// Claims `inbound` for `claimant`: `false` when another handler has it or it is done (or
/// the claim cannot be written; the sweep tries again).
pub async fn claim(store: &Store, inbound: &Inbound, claimant: &str) -> bool {
    match store
        .claim_inbound(&inbound.id, claimant, CLAIM_LEASE_MS)
        .await
    {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(provider = %inbound.provider, "cannot claim a stored delivery (the sweep tries again): {e}");
            false
        }
    }
}

/// Hands `provider`'s stored, unhandled deliveries to `handle` at start and every [`SWEEP`],
/// until `shutdown`.
pub async fn sweep<F, Fut>(
    store: &Store,
    provider: &str,
    handle: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Inbound) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.prune_inbound().await {
            tracing::warn!("cannot drop old delivery payloads: {e}");
        }
        match store.unprocessed_inbound(provider, 1000).await {
            Ok(list) => {
                for inbound in list {
                    handle(inbound).await;
                }
            }
            Err(e) => tracing::warn!(provider, "cannot read unhandled deliveries: {e}"),
        }
    }
}
