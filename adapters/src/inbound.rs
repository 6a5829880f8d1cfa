//! Stored inbound deliveries (GitHub's deliveries, Slack's events): whoever handles one, the
//! request that stored it or the sweep, claims it first (a lease), so the two never both
//! handle it. The lease is short and renewed while the handler works, so a delivery left by
//! a server that died (kill -9, a lost machine) is taken up by the next sweep of any server
//! within [`CLAIM_LEASE_MS`] + [`SWEEP`]. The sweep runs at start and every [`SWEEP`].
//! Decisions 0009 and 0015.

use std::future::Future;
use std::time::Duration;

use airlock_core::config::RetentionConfig;
use airlock_core::store::Inbound;
use airlock_core::Store;

/// How long a claim lasts without renewal: a crashed server's deliveries are handled at
/// most this long (plus a sweep) after it died.
pub const CLAIM_LEASE_MS: i64 = 30 * 1000;
/// How often a live handler renews its claim: three renewals fit in one lease, so a slow
/// database write or two does not let the claim lapse under a working handler.
pub const RENEW: Duration = Duration::from_secs(10);
/// How often deliveries nobody handles are looked for.
pub const SWEEP: Duration = Duration::from_secs(15);
/// How often the retention settings are applied to handled deliveries.
pub const PRUNE: Duration = Duration::from_secs(10 * 60);

/// A name for this process as a claimant: new per start, so a claim left by a crashed
/// process is not mistaken for a live one.
pub fn claimant(provider: &str) -> String {
    format!(
        "{provider}:{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// Runs `work` on `inbound` if `claimant` can claim it, renewing the claim every [`RENEW`]
/// until `work` is done: `None` when another handler has it or it is done (or the claim
/// cannot be written; the sweep tries again).
pub async fn claimed<T>(
    store: &Store,
    inbound: &Inbound,
    claimant: &str,
    work: impl Future<Output = T>,
) -> Option<T> {
    claimed_for(store, inbound, claimant, (CLAIM_LEASE_MS, RENEW), work).await
}

/// [`claimed`] with a lease of `lease_ms` renewed every `renew`.
async fn claimed_for<T>(
    store: &Store,
    inbound: &Inbound,
    claimant: &str,
    (lease_ms, renew): (i64, Duration),
    work: impl Future<Output = T>,
) -> Option<T> {
    match store.claim_inbound(&inbound.id, claimant, lease_ms).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::warn!(provider = %inbound.provider, "cannot claim a stored delivery (the sweep tries again): {e}");
            return None;
        }
    }
    Some(renewing(store, inbound, claimant, (lease_ms, renew), work).await)
}

/// Runs `work` on a delivery `claimant` claimed when it stored it
/// ([`Store::record_inbound_claimed`]), renewing the claim every [`RENEW`].
pub async fn held<T>(
    store: &Store,
    inbound: &Inbound,
    claimant: &str,
    work: impl Future<Output = T>,
) -> T {
    renewing(store, inbound, claimant, (CLAIM_LEASE_MS, RENEW), work).await
}

async fn renewing<T>(
    store: &Store,
    inbound: &Inbound,
    claimant: &str,
    (lease_ms, renew): (i64, Duration),
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + renew, renew);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                match store.renew_inbound_claim(&inbound.id, claimant, lease_ms).await {
                    Ok(true) => {}
                    // Only a lapse (a stall longer than the lease) gets here; what the work
                    // writes is keyed (one session per thread, the delivery marked in its
                    // transaction), so a second handler finds it done.
                    Ok(false) => tracing::warn!(provider = %inbound.provider, "the claim on a delivery lapsed while it was handled"),
                    Err(e) => tracing::warn!(provider = %inbound.provider, "cannot renew the claim on a delivery: {e}"),
                }
            }
        }
    }
}

/// Hands `provider`'s stored deliveries that nobody handles to `handle` at start and every
/// [`SWEEP`], until `shutdown`.
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

/// Applies `retention` to every provider's handled deliveries at start and every [`PRUNE`],
/// until `shutdown`.
pub async fn prune(store: Store, retention: RetentionConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(PRUNE);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match store.prune_inbound(&retention).await {
            Ok(p) if p.payloads + p.deleted > 0 => {
                tracing::info!(
                    payloads = p.payloads,
                    records = p.deleted,
                    "old deliveries pruned"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot prune old deliveries: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that works far longer than the lease keeps its delivery: nobody else can
    /// claim it (nor does the sweep list it) until the work is done and marked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_handler_keeps_its_claim_past_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::connect(&url, 4, airlock_core::secrets::MasterKey::generate())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let inbound = store
            .record_inbound("github", "d-1", "issues", "{}")
            .await
            .unwrap()
            .unwrap();
        let rival = {
            let (store, id) = (store.clone(), inbound.id.clone());
            tokio::spawn(async move {
                let mut taken = 0;
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    taken += store.claim_inbound(&id, "rival", 200).await.unwrap() as u32;
                    taken += store.unprocessed_inbound("github", 10).await.unwrap().len() as u32;
                }
                taken
            })
        };
        let work = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            store.finish_inbound(&inbound.id, None).await.unwrap();
            "done"
        };
        let out = claimed_for(
            &store,
            &inbound,
            "me",
            (200, Duration::from_millis(50)),
            work,
        )
        .await;
        assert_eq!(out, Some("done"));
        assert_eq!(
            rival.await.unwrap(),
            0,
            "the claim was taken or listed while held"
        );
        // Without renewal (a handler that died) the same lease lapses and is taken over.
        let other = store
            .record_inbound("github", "d-2", "issues", "{}")
            .await
            .unwrap()
            .unwrap();
        assert!(store.claim_inbound(&other.id, "dead", 200).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.claim_inbound(&other.id, "rival", 200).await.unwrap());
    }
}
