//! The SQL both stores share. SQLite and PostgreSQL accept the same statements here
//! (`$N` parameters, `ON CONFLICT`, `RETURNING`); what differs (how a group commit is
//! sent, where the chain's head lives, notifications, leadership) stays in each store.
//!
//! sqlx's query types are generic over the database, but every bind then needs its
//! own trait bound; macros instantiate the same code for each concrete database instead.
//!
//! One file per aggregate holds its statements: `tasks.rs` (with the guard checks of a
//! group commit), `leases.rs`, `credentials.rs`, `revocations.rs`, `audit.rs`, `keys.rs`
//! (signing keys, SVID authorities, workload entries), `tokens.rs` (admin and join tokens),
//! `contexts.rs` (subject contexts) and `meta.rs`. Each defines one macro that adds its
//! methods to the `Store` impl being gathered; [`portable_store`] runs them in turn.

mod audit;
mod contexts;
mod credentials;
mod keys;
mod leases;
mod meta;
mod revocations;
mod tasks;
mod tokens;

pub(crate) use audit::audit_sql;
pub(crate) use contexts::context_sql;
pub(crate) use credentials::credential_sql;
pub(crate) use keys::key_sql;
pub(crate) use leases::lease_sql;
pub(crate) use meta::meta_sql;
pub(crate) use revocations::revocation_sql;
pub(crate) use tasks::task_sql;
pub(crate) use tokens::token_sql;

/// Rows per multi-row INSERT, well under both databases' bound-parameter limits.
pub(crate) const ROWS_PER_STATEMENT: usize = 256;

/// Keeps the last row for each id: one upsert statement may not touch a row twice in
/// PostgreSQL, and the last write in a batch is the one that must win.
pub(crate) fn last_per_id<T: Clone>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<T> = rows.iter().rev().filter(|r| seen.insert(id(r).to_owned())).cloned().collect();
    out.reverse();
    out
}

/// Generates, for one sqlx database type, the INSERT builders of a group commit
/// (`push_*`, one statement per call, and `check_guards`) and `impl Store for $store`
/// with every method whose SQL is portable; `$store` must have a `pool` field and pass
/// the methods that differ in the braces.
macro_rules! portable_store {
    ($store:ty, $db:ty, { $($specific:tt)* }) => {
        $crate::ledger::sql::assemble!(
            $store,
            $db,
            [task_sql lease_sql credential_sql revocation_sql audit_sql key_sql token_sql context_sql meta_sql],
            { $($specific)* }
        );
    };
}

/// Gathers the `Store` methods aggregate by aggregate: each aggregate's macro appends its
/// methods and calls back here with the rest of the list. The `impl` is written only once
/// the list is empty, so `#[async_trait]` sees every method (it cannot expand macros
/// inside the impl it rewrites).
macro_rules! assemble {
    ($store:ty, $db:ty, [], { $($methods:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::ledger::Store for $store {
            $($methods)*
        }
    };
    ($store:ty, $db:ty, [$next:ident $($rest:ident)*], { $($methods:tt)* }) => {
        $crate::ledger::sql::$next!($store, $db, [$($rest)*], { $($methods)* });
    };
}

pub(crate) use {assemble, portable_store};
