//! Who is asking: the human behind a chat or GitHub account, created on first use only where
//! the deployment's policy allows it, and linking of further accounts with one-time codes.

use airlock_core::domain::{Human, Provider, Role};
use airlock_core::store::{AccountRef, PendingLink};
use airlock_core::{Store, StoreError};

/// An account as an adapter sees it.
#[derive(Debug, Clone)]
pub struct Account {
    pub provider: Provider,
    pub workspace: String,
    pub external_id: String,
    pub handle: String,
}

impl Account {
    fn as_ref(&self) -> AccountRef<'_> {
        AccountRef {
            provider: self.provider,
            workspace: &self.workspace,
            external_id: &self.external_id,
        }
    }

    pub fn pending(&self) -> PendingLink {
        PendingLink {
            provider: self.provider,
            workspace: self.workspace.clone(),
            external_id: self.external_id.clone(),
            handle: self.handle.clone(),
        }
    }
}

/// The human behind `account`, or `None` when it is not linked and may not be created.
/// With `create`, an unknown account becomes a new member named after its handle (its
/// provider vouched for it by signing the request).
pub async fn human_of(
    store: &Store,
    account: &Account,
    create: Option<&str>,
) -> Result<Option<Human>, StoreError> {
    if let Some(h) = store.human_for_account(account.as_ref()).await? {
        return Ok(Some(h));
    }
    let Some(email) = create else {
        return Ok(None);
    };
    let human = store
        .add_human(&account.handle, email, Role::Member)
        .await?;
    store
        .link_identity(&human.id, account.as_ref(), &account.handle, true)
        .await?;
    tracing::info!(human = %human.id, provider = %account.provider, "created a human for a new account");
    Ok(Some(human))
}

/// Links the account a code names to `human` (who proved who they are). Returns the account.
pub async fn redeem(store: &Store, code: &str, human: &Human) -> Result<PendingLink, StoreError> {
    let pending = store.redeem_link_code(code).await?;
    let account = AccountRef {
        provider: pending.provider,
        workspace: &pending.workspace,
        external_id: &pending.external_id,
    };
    match store.human_for_account(account.clone()).await? {
        Some(h) if h.id == human.id => {}
        Some(_) => {
            return Err(StoreError::Conflict(format!(
                "that {} account is linked to someone else already; an admin can unlink it",
                pending.provider
            )))
        }
        None => {
            store
                .link_identity(&human.id, account, &pending.handle, true)
                .await?;
        }
    }
    Ok(pending)
}
