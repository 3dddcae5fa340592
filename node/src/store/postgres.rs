//! The shared store: one PostgreSQL database used by several nodes at once,
//! through a `deadpool-postgres` pool. Same tables and semantics as the
//! SQLite store; what SQLite gets from its single writer, this gets from
//! row locks and advisory locks taken inside each transaction:
//!
//! - friend requests/accepts lock the (ordered) user pair,
//! - a re-key locks its group row `FOR UPDATE`, and queuing to a group
//!   locks it `FOR SHARE`, so texts are checked and fanned out against
//!   one epoch and one member list,
//! - an upload locks its sender (quota check, id resume) and the blob row,
//!   and a delivery receipt locks the blob row,
//! - duplicates are caught by the queue's `UNIQUE(recipient, msg_id)` with
//!   `INSERT ... ON CONFLICT DO NOTHING`.
//!
//! Transactions run at READ COMMITTED; one that meets a deadlock (40P01) or
//! a serialization failure (40001) is retried from the start.
//!
//! Connections are plain TCP (or a unix socket): TLS to PostgreSQL is not
//! supported yet, so `sslmode=require` is refused; keep the database on a
//! trusted network.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use fastchat_proto::MessageId;
use fastchat_proto::control::Relation;
use rustls::pki_types::CertificateDer;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use super::{
    BlobLocation, BlobStart, GroupRecord, Membership, QueueLimits, Queued, Queuing, Store,
    StoreError, TextToQueue, UserKeys,
    policy::{self, Lookup},
};

/// Connections per node.
const POOL_SIZE: usize = 16;
/// Whole-transaction attempts when PostgreSQL reports a deadlock or a
/// serialization failure.
const MAX_TRIES: u32 = 10;
/// `pg_advisory_xact_lock` key serializing schema creation ("fastchat").
const SCHEMA_LOCK: i64 = 0x6661_7374_6368_6174;
/// Advisory lock namespaces (the two-key form): a friend pair, an uploader.
const PAIR_LOCK: i32 = 1;
const SENDER_LOCK: i32 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users(
    name TEXT PRIMARY KEY,
    public_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE users ADD COLUMN IF NOT EXISTS login_key BYTEA;
CREATE TABLE IF NOT EXISTS friend_requests(
    from_user TEXT NOT NULL,
    to_user TEXT NOT NULL,
    PRIMARY KEY(from_user, to_user)
);
CREATE TABLE IF NOT EXISTS friendships(
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    PRIMARY KEY(a, b)
);
CREATE TABLE IF NOT EXISTS queue(
    seq BIGSERIAL PRIMARY KEY,
    recipient TEXT NOT NULL,
    msg_id BYTEA NOT NULL,
    envelope BYTEA NOT NULL,
    UNIQUE(recipient, msg_id)
);
CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue(recipient, seq);
CREATE TABLE IF NOT EXISTS groups(
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin TEXT NOT NULL,
    epoch BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs(
    blob_id BIGSERIAL PRIMARY KEY,
    sender TEXT NOT NULL,
    msg_id BYTEA NOT NULL,
    total_len BIGINT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    UNIQUE(sender, msg_id)
);
CREATE TABLE IF NOT EXISTS blob_recipients(
    blob_id BIGINT NOT NULL,
    recipient TEXT NOT NULL,
    PRIMARY KEY(blob_id, recipient)
);
CREATE TABLE IF NOT EXISTS group_members(
    group_id BIGINT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY(group_id, member)
);
CREATE TABLE IF NOT EXISTS queue_usage(
    recipient TEXT PRIMARY KEY,
    texts BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION fastchat_queue_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO queue_usage(recipient, texts, bytes) VALUES (NEW.recipient, 1, length(NEW.envelope))
        ON CONFLICT (recipient) DO UPDATE
            SET texts = queue_usage.texts + 1, bytes = queue_usage.bytes + length(NEW.envelope);
        RETURN NEW;
    END IF;
    UPDATE queue_usage SET texts = GREATEST(texts - 1, 0), bytes = GREATEST(bytes - length(OLD.envelope), 0)
        WHERE recipient = OLD.recipient;
    RETURN OLD;
END $$;
CREATE OR REPLACE TRIGGER queue_usage_kept AFTER INSERT OR DELETE ON queue
    FOR EACH ROW EXECUTE FUNCTION fastchat_queue_usage();
-- A database from before the counts: count what its queue holds once.
INSERT INTO queue_usage(recipient, texts, bytes)
    SELECT recipient, COUNT(*), SUM(length(envelope)) FROM queue GROUP BY recipient
    ON CONFLICT (recipient) DO NOTHING;
";

// Hot-path statements, prepared once per connection (deadpool's cache).
const ARE_FRIENDS: &str = "SELECT 1 FROM friendships WHERE a = $1 AND b = $2";
const LOCK_GROUP_SHARED: &str = "SELECT epoch FROM groups WHERE id = $1 FOR SHARE";
// COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
const GROUP_MEMBERS: &str =
    "SELECT member FROM group_members WHERE group_id = $1 ORDER BY member COLLATE \"C\"";
const ENQUEUE_ONE: &str = "INSERT INTO queue(recipient, msg_id, envelope) VALUES ($1, $2, $3)
     ON CONFLICT (recipient, msg_id) DO NOTHING RETURNING seq";
/// Fans one envelope out to many recipients in one round trip; rows are
/// inserted (and numbered) in the order given.
const ENQUEUE_MANY: &str = "INSERT INTO queue(recipient, msg_id, envelope)
     SELECT r, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS t(r, i) ORDER BY i
     ON CONFLICT (recipient, msg_id) DO NOTHING RETURNING recipient, seq";
/// Whether a text with id `$2` still waits for any of `$1`.
const GROUP_TEXT_WAITING: &str =
    "SELECT EXISTS(SELECT 1 FROM queue WHERE recipient = ANY($1) AND msg_id = $2)";
const PENDING: &str =
    "SELECT seq, envelope FROM queue WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3";
const ACK: &str = "DELETE FROM queue WHERE recipient = $1 AND seq = ANY($2)";
const USAGE: &str = "SELECT texts, bytes FROM queue_usage WHERE recipient = $1";

/// The PostgreSQL-backed [`Store`], safe to share between nodes.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

/// Why one transaction attempt ended early.
enum Fail {
    /// A refusal to hand back as is.
    Store(StoreError),
    /// A database error: retried when transient, else unavailable.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// One readable sentence for a database failure. Only the server's primary
/// message is used: its DETAIL may quote key values.
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    let why = match (e.code(), e.as_db_error()) {
        (Some(c), _) if *c == SqlState::DISK_FULL => "the PostgreSQL store's disk is full".into(),
        (Some(c), _) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
            "the PostgreSQL store is read-only (a standby?)".into()
        }
        (Some(c), _)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            format!(
                "the PostgreSQL store is unreachable: {}",
                e.as_db_error()
                    .map(|d| d.message())
                    .unwrap_or("shutting down")
            )
        }
        (_, Some(db)) => format!("the PostgreSQL store failed: {}", db.message()),
        (_, None) if e.is_closed() => {
            "the PostgreSQL store is unreachable: connection closed".into()
        }
        (_, None) => format!("the PostgreSQL store is unreachable: {e}"),
    };
    StoreError::Unavailable(why)
}

fn pool_unavailable(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => unavailable(e),
        PoolError::Timeout(_) => StoreError::Unavailable(
            "the PostgreSQL store is unreachable: timed out waiting for a connection".into(),
        ),
        other => StoreError::Unavailable(format!("the PostgreSQL store is unreachable: {other}")),
    }
}

fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // A failing system RNG leaves zeros; the queue's UNIQUE constraint then
    // merely de-duplicates, it never mixes up recipients.
    let _ = fastchat_crypto::random_bytes(&mut id);
    id
}

/// Runs `$body` (which may `return` early and use `?`) in a transaction on
/// a pooled connection, commits when it succeeds, and starts over on a
/// deadlock or serialization failure. Evaluates to `Result<_, StoreError>`.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            let outcome: Result<_, Fail> = async {
                let $tx = client.transaction().await?;
                let value: Result<_, Fail> = async { $body }.await;
                let value = value?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(Fail::Store(e)) => break Err(e),
                Err(Fail::Db(e)) if retryable(&e) && attempt < MAX_TRIES => {
                    tracing::debug!(attempt, code = ?e.code(), "PostgreSQL transaction conflict; retrying");
                    drop(client);
                    backoff(attempt).await;
                }
                Err(Fail::Db(e)) => break Err(unavailable(e)),
            }
        }
    }};
}

async fn backoff(attempt: u32) {
    let mut jitter = [0u8; 1];
    let _ = fastchat_crypto::random_bytes(&mut jitter);
    let ms = (1u64 << attempt.min(6)) + u64::from(jitter[0] % 8);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn are_friends(
    tx: &Transaction<'_>,
    a: &str,
    b: &str,
) -> Result<bool, tokio_postgres::Error> {
    let (a, b) = pair(a, b);
    let stmt = tx.prepare_cached(ARE_FRIENDS).await?;
    Ok(tx.query_opt(&stmt, &[&a, &b]).await?.is_some())
}

async fn has_request(
    tx: &Transaction<'_>,
    from: &str,
    to: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM friend_requests WHERE from_user = $1 AND to_user = $2",
            &[&from, &to],
        )
        .await?
        .is_some())
}

/// Serializes friend operations on the pair `a`, `b` until the transaction ends.
async fn lock_pair(tx: &Transaction<'_>, a: &str, b: &str) -> Result<(), tokio_postgres::Error> {
    let (a, b) = pair(a, b);
    let key = format!("{a}\u{1f}{b}");
    tx.execute(
        "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))",
        &[&PAIR_LOCK, &key],
    )
    .await
    .map(drop)
}

async fn enqueue(
    tx: &Transaction<'_>,
    to: &str,
    id: &[u8],
    envelope: &[u8],
) -> Result<Option<u64>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(ENQUEUE_ONE).await?;
    let row = tx.query_opt(&stmt, &[&to, &id, &envelope]).await?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Queues `envelope` under `id` for each of `to`; returns those stored
/// (not already queued) with their positions, in the order given.
async fn enqueue_many(
    tx: &Transaction<'_>,
    to: &[String],
    id: &[u8],
    envelope: &[u8],
) -> Result<Vec<(String, u64)>, tokio_postgres::Error> {
    if to.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx.prepare_cached(ENQUEUE_MANY).await?;
    let mut stored: Vec<(String, u64)> = tx
        .query(&stmt, &[&to, &id, &envelope])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    // Positions follow the given order; RETURNING's row order is not promised.
    stored.sort_by_key(|(_, seq)| *seq);
    Ok(stored)
}

const GROUP_HEAD: &str = "SELECT id, name, admin, epoch,
     ARRAY(SELECT member FROM group_members WHERE group_id = g.id ORDER BY member COLLATE \"C\")
     FROM groups g";

fn group_record(r: &tokio_postgres::Row) -> GroupRecord {
    GroupRecord {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        admin: r.get(2),
        epoch: r.get::<_, i64>(3) as u64,
        members: r.get(4),
    }
}

fn blob_location(r: &tokio_postgres::Row) -> BlobLocation {
    BlobLocation {
        blob_id: r.get::<_, i64>(0) as u64,
        total_len: r.get::<_, i64>(1) as u64,
        owner: r.get(2),
    }
}

/// How a node reaches PostgreSQL.
#[derive(Clone, Debug)]
pub enum PostgresTls {
    /// TLS (1.2 or 1.3), trusting only these CA certificates and checking
    /// that the server's certificate names the host in the URL.
    Verify(Vec<CertificateDer<'static>>),
    /// Plain TCP: to this machine only, unless `anywhere` (an explicit
    /// choice, for a private network).
    Plain {
        /// Whether other machines may be reached without TLS.
        anywhere: bool,
    },
}

/// Whether every host of `config` is this machine (loopback or a socket).
fn only_this_machine(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    })
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db`
    /// or a key=value string) and creates the tables if needed. Several nodes
    /// may start at once: schema creation is serialized by an advisory lock.
    /// With [`PostgresTls::Verify`] every connection is TLS to a server whose
    /// certificate the given CA signed; plain TCP goes only to this machine
    /// unless allowed anywhere.
    pub async fn connect(url: &str, tls: &PostgresTls) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("the PostgreSQL URL is not valid: {e}"))
        })?;
        let connector = match tls {
            PostgresTls::Verify(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in ca {
                    roots.add(cert.clone()).map_err(|e| {
                        StoreError::Unavailable(format!("the PostgreSQL CA is not usable: {e}"))
                    })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let client = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StoreError::Unavailable(format!("TLS to PostgreSQL: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.ssl_mode(SslMode::Require);
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
            }
            PostgresTls::Plain { anywhere } => {
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(StoreError::Unavailable(
                        "the URL asks for TLS (sslmode=require): give --store-ca FILE, the CA of the PostgreSQL server's certificate".into(),
                    ));
                }
                if !anywhere && !only_this_machine(&config) {
                    return Err(StoreError::Unavailable(
                        "PostgreSQL on another machine is reached over TLS only: give --store-ca FILE (the CA of its certificate), or --store-plaintext on a network nobody else can reach".into(),
                    ));
                }
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("fastchat-node");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match connector {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("the PostgreSQL pool cannot be built: {e}"))
            })?;
        let store = Self { pool };
        transaction!(store, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            Ok(())
        })?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_unavailable)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(
        &self,
        name: &str,
        public_key: &[u8],
        login_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let login = login_key.map(|k| k.to_vec());
        let now = (fastchat_proto::now_ms() / 1000) as i64;
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO users(name, public_key, created_at, login_key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &public_key, &now, &login],
            )
            .await
            .map_err(unavailable)?;
        if n == 0 {
            return Err(StoreError::NameTaken);
        }
        Ok(())
    }

    async fn public_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT public_key FROM users WHERE name = $1", &[&name])
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn user_keys(&self, name: &str) -> Result<Option<UserKeys>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT public_key, login_key FROM users WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| UserKeys {
            public_key: r.get(0),
            login_key: r
                .get::<_, Option<Vec<u8>>>(1)
                .and_then(|k| k.try_into().ok()),
        }))
    }

    async fn set_login_key(&self, name: &str, login_key: [u8; 32]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE users SET login_key = $2 WHERE name = $1",
                &[&name, &&login_key[..]],
            )
            .await
            .map_err(unavailable)?;
        if n == 0 {
            return Err(StoreError::UnknownUser);
        }
        Ok(())
    }

    async fn relation(&self, me: &str, other: &str) -> Result<Relation, StoreError> {
        let (a, b) = pair(me, other);
        let client = self.client().await?;
        // One statement, one snapshot.
        let row = client
            .query_one(
                "SELECT
                    EXISTS(SELECT 1 FROM friendships WHERE a = $1 AND b = $2),
                    EXISTS(SELECT 1 FROM friend_requests WHERE from_user = $4 AND to_user = $3),
                    EXISTS(SELECT 1 FROM friend_requests WHERE from_user = $3 AND to_user = $4)",
                &[&a, &b, &me, &other],
            )
            .await
            .map_err(unavailable)?;
        let (friends, by_them, by_me): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        Ok(if friends {
            Relation::Friends
        } else if by_them {
            Relation::RequestedByThem
        } else if by_me {
            Relation::RequestedByMe
        } else {
            Relation::None
        })
    }

    async fn request_friend(
        &self,
        from: &str,
        to: &str,
        envelope: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        transaction!(self, |tx| {
            lock_pair(&tx, from, to).await?;
            let exists = tx
                .query_opt("SELECT 1 FROM users WHERE name = $1", &[&to])
                .await?
                .is_some();
            let store_it = policy::friend_request(
                exists,
                are_friends(&tx, from, to).await?,
                has_request(&tx, from, to).await?,
            )?;
            if !store_it {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO friend_requests(from_user, to_user) VALUES ($1, $2)",
                &[&from, &to],
            )
            .await?;
            Ok(enqueue(&tx, to, &random_id(), envelope).await?)
        })
    }

    async fn accept_friend(
        &self,
        accepter: &str,
        requester: &str,
        envelope: &[u8],
    ) -> Result<u64, StoreError> {
        transaction!(self, |tx| {
            lock_pair(&tx, accepter, requester).await?;
            policy::friend_accept(
                are_friends(&tx, accepter, requester).await?,
                has_request(&tx, requester, accepter).await?,
            )?;
            tx.execute(
                "DELETE FROM friend_requests WHERE (from_user = $1 AND to_user = $2) OR (from_user = $2 AND to_user = $1)",
                &[&requester, &accepter],
            )
            .await?;
            let (a, b) = pair(accepter, requester);
            tx.execute("INSERT INTO friendships(a, b) VALUES ($1, $2)", &[&a, &b])
                .await?;
            let seq = enqueue(&tx, requester, &random_id(), envelope)
                .await?
                .ok_or_else(|| StoreError::Unavailable("queue id collision".into()))?;
            Ok(seq)
        })
    }

    async fn create_group(&self, name: &str, admin: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // One statement: the group and its admin's membership, atomically.
        let row = client
            .query_opt(
                "WITH g AS (
                    INSERT INTO groups(name, admin, epoch) VALUES ($1, $2, 0)
                    ON CONFLICT (name) DO NOTHING RETURNING id
                 )
                 INSERT INTO group_members(group_id, member) SELECT id, $2 FROM g RETURNING group_id",
                &[&name, &admin],
            )
            .await
            .map_err(unavailable)?;
        match row {
            Some(r) => Ok(r.get::<_, i64>(0) as u64),
            None => Err(StoreError::NameTaken),
        }
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{GROUP_HEAD} WHERE name = $1"), &[&name])
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(group_record))
    }

    async fn group(&self, id: u64) -> Result<Option<GroupRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{GROUP_HEAD} WHERE id = $1"), &[&(id as i64)])
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(group_record))
    }

    async fn rekey(
        &self,
        id: u64,
        epoch: u64,
        change: Membership,
        envelopes: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let gid = id as i64;
        transaction!(self, |tx| {
            // FOR UPDATE: waits for concurrent re-keys and for texts being
            // queued under the current epoch (they hold FOR SHARE).
            let current = tx
                .query_opt("SELECT epoch FROM groups WHERE id = $1 FOR UPDATE", &[&gid])
                .await?
                .map(|r| r.get::<_, i64>(0) as u64);
            policy::rekey(current, epoch)?;
            tx.execute(
                "UPDATE groups SET epoch = $2 WHERE id = $1",
                &[&gid, &(epoch as i64)],
            )
            .await?;
            match &change {
                Membership::Add(members) => {
                    tx.execute(
                        "INSERT INTO group_members(group_id, member) SELECT $1, unnest($2::text[])",
                        &[&gid, members],
                    )
                    .await?;
                }
                Membership::Remove(m) => {
                    tx.execute(
                        "DELETE FROM group_members WHERE group_id = $1 AND member = $2",
                        &[&gid, m],
                    )
                    .await?;
                }
            }
            let mut out = Vec::with_capacity(envelopes.len());
            for (to, envelope) in &envelopes {
                let seq = enqueue(&tx, to, &random_id(), envelope)
                    .await?
                    .ok_or_else(|| StoreError::Unavailable("queue id collision".into()))?;
                out.push((to.clone(), seq));
            }
            Ok(out)
        })
    }

    async fn enqueue_texts(
        &self,
        from: &str,
        texts: Vec<TextToQueue>,
        limits: QueueLimits,
    ) -> Result<Vec<Queuing>, StoreError> {
        transaction!(self, |tx| {
            let mut admission = policy::TextAdmission::new(from);
            // The trigger keeps queue_usage; this only checks the batch.
            let mut room = policy::QueueRoom::new(limits);
            let mut out = Vec::with_capacity(texts.len());
            for text in &texts {
                match admission.needs(&text.to) {
                    Some(Lookup::Friendship(to)) => {
                        let f = are_friends(&tx, from, to).await?;
                        admission.knows_friendship(to, f);
                    }
                    Some(Lookup::Group(id)) => {
                        // FOR SHARE holds off a re-key until this commits;
                        // the member list is read after the lock, so it
                        // belongs to the epoch just read.
                        let lock = tx.prepare_cached(LOCK_GROUP_SHARED).await?;
                        let now = match tx.query_opt(&lock, &[&(id as i64)]).await? {
                            Some(r) => {
                                let list = tx.prepare_cached(GROUP_MEMBERS).await?;
                                let members = tx
                                    .query(&list, &[&(id as i64)])
                                    .await?
                                    .iter()
                                    .map(|m| m.get::<_, String>(0))
                                    .collect();
                                Some((r.get::<_, i64>(0) as u64, members))
                            }
                            None => None,
                        };
                        admission.knows_group(id, now);
                    }
                    None => {}
                }
                let recipients = match admission.recipients(&text.to) {
                    Ok(r) => r,
                    Err(refusal) => {
                        out.push(Queuing::Refused(refusal));
                        continue;
                    }
                };
                let envelope = text.envelope.as_slice();
                let size = envelope.len() as u64;
                for to in room.unread(&recipients) {
                    let stmt = tx.prepare_cached(USAGE).await?;
                    let waiting = tx
                        .query_opt(&stmt, &[&to])
                        .await?
                        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
                        .unwrap_or((0, 0));
                    room.knows(to, waiting);
                }
                if let Err(refusal) = room.check(&recipients, size) {
                    out.push(Queuing::Refused(refusal));
                    continue;
                }
                // A group text is one text: resent while any member still
                // waits for it, it is a duplicate for all (as in SQLite,
                // where it is stored once).
                let resent = recipients.len() > 1 && {
                    let stmt = tx.prepare_cached(GROUP_TEXT_WAITING).await?;
                    tx.query_one(&stmt, &[&recipients, &text.id.0.as_slice()])
                        .await?
                        .get::<_, bool>(0)
                };
                let stored = if resent {
                    Vec::new()
                } else {
                    enqueue_many(&tx, &recipients, &text.id.0, envelope).await?
                };
                for (to, _) in &stored {
                    room.stored(to, size);
                }
                out.push(Queuing::of(stored));
            }
            Ok(out)
        })
    }

    async fn begin_blob(
        &self,
        sender: &str,
        id: MessageId,
        total_len: u64,
        recipients: Vec<String>,
        envelope: Vec<u8>,
        quota: u64,
        owner: &str,
    ) -> Result<BlobStart, StoreError> {
        transaction!(self, |tx| {
            // One upload decision per sender at a time: the quota sum and the
            // resume check see every earlier upload.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))",
                &[&SENDER_LOCK, &sender],
            )
            .await?;
            let existing = tx
                .query_opt(
                    "SELECT blob_id, total_len, owner FROM blobs WHERE sender = $1 AND msg_id = $2 FOR UPDATE",
                    &[&sender, &&id.0[..]],
                )
                .await?
                .as_ref()
                .map(blob_location);
            if let Some(blob) = existing {
                let previous_owner = policy::blob_moves(&blob.owner, owner);
                if blob.owner != owner {
                    tx.execute(
                        "UPDATE blobs SET owner = $1 WHERE blob_id = $2",
                        &[&owner, &(blob.blob_id as i64)],
                    )
                    .await?;
                }
                return Ok(BlobStart {
                    blob_id: blob.blob_id,
                    total_len: blob.total_len,
                    queued: Vec::new(),
                    previous_owner,
                });
            }
            let used: i64 = tx
                .query_one(
                    "SELECT COALESCE(SUM(total_len), 0)::BIGINT FROM blobs WHERE sender = $1",
                    &[&sender],
                )
                .await?
                .get(0);
            policy::blob_quota(used as u64, total_len, quota)?;
            let blob_id: i64 = tx
                .query_one(
                    "INSERT INTO blobs(sender, msg_id, total_len, owner) VALUES ($1, $2, $3, $4) RETURNING blob_id",
                    &[&sender, &&id.0[..], &(total_len as i64), &owner],
                )
                .await?
                .get(0);
            if !recipients.is_empty() {
                tx.execute(
                    "INSERT INTO blob_recipients(blob_id, recipient) SELECT $1, unnest($2::text[])
                     ON CONFLICT DO NOTHING",
                    &[&blob_id, &recipients],
                )
                .await?;
            }
            let queued = enqueue_many(&tx, &recipients, &id.0, &envelope).await?;
            Ok(BlobStart {
                blob_id: blob_id as u64,
                total_len,
                queued,
                previous_owner: None,
            })
        })
    }

    async fn blob_for(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT b.blob_id, b.total_len, b.owner FROM blobs b JOIN blob_recipients r ON r.blob_id = b.blob_id
                 WHERE b.sender = $1 AND b.msg_id = $2 AND r.recipient = $3",
                &[&sender, &&id.0[..], &recipient],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.as_ref().map(blob_location))
    }

    async fn blob_received(
        &self,
        recipient: &str,
        sender: &str,
        id: MessageId,
    ) -> Result<Option<BlobLocation>, StoreError> {
        transaction!(self, |tx| {
            // Receipts for one blob take turns, so exactly one sees the last
            // recipient go and deletes the blob.
            let blob = tx
                .query_opt(
                    "SELECT blob_id, total_len, owner FROM blobs WHERE sender = $1 AND msg_id = $2 FOR UPDATE",
                    &[&sender, &&id.0[..]],
                )
                .await?
                .as_ref()
                .map(blob_location);
            let Some(blob) = blob else {
                return Ok(None);
            };
            let blob_id = blob.blob_id as i64;
            tx.execute(
                "DELETE FROM blob_recipients WHERE blob_id = $1 AND recipient = $2",
                &[&blob_id, &recipient],
            )
            .await?;
            let left: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM blob_recipients WHERE blob_id = $1",
                    &[&blob_id],
                )
                .await?
                .get(0);
            if left != 0 {
                return Ok(None);
            }
            tx.execute("DELETE FROM blobs WHERE blob_id = $1", &[&blob_id])
                .await?;
            Ok(Some(blob))
        })
    }

    async fn pending(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(PENDING).await.map_err(unavailable)?;
        let rows = client
            .query(&stmt, &[&user, &(after as i64), &(limit as i64)])
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    async fn ack(&self, user: &str, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        let client = self.client().await?;
        let stmt = client.prepare_cached(ACK).await.map_err(unavailable)?;
        // One statement: atomic on its own.
        client
            .execute(&stmt, &[&user, &seqs])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COUNT(*) FROM queue", &[])
            .await
            .map_err(unavailable)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn last_pending(&self, user: &str) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT MAX(seq) FROM queue WHERE recipient = $1", &[&user])
            .await
            .map_err(unavailable)?;
        Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
    }

    async fn any_pending_upto(&self, user: &str, upto: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM queue WHERE recipient = $1 AND seq <= $2)",
                &[&user, &(upto.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.get::<_, bool>(0))
    }

    async fn queued_for(&self, user: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(USAGE, &[&user])
            .await
            .map_err(unavailable)?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    async fn close(&self) {
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use crate::store::{QueueLimits, Target};
    use fastchat_testkit::postgres::PgServer;

    use super::super::conformance::{self, text};

    /// Plain TCP, to this machine only: the test servers.
    const LOCAL: PostgresTls = PostgresTls::Plain { anywhere: false };
    use super::*;

    /// A fresh database on the server the tests share; keep the handle
    /// alive for the test's duration.
    async fn store(db: &str) -> (Arc<PgServer>, String, PostgresStore) {
        let db = db.to_string();
        let (server, url) = tokio::task::spawn_blocking(move || {
            let server = PgServer::shared();
            let url = server.create_database(&db);
            (server, url)
        })
        .await
        .unwrap();
        let store = PostgresStore::connect(&url, &LOCAL).await.unwrap();
        (server, url, store)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn friendship_lifecycle_and_queue() {
        let (_pg, _, s) = store("friendship").await;
        conformance::friendship_lifecycle_and_queue(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn blobs_resume_count_quota_move_and_go_when_all_have_them() {
        let (_pg, _, s) = store("blobs").await;
        conformance::blobs_resume_count_quota_move_and_go_when_all_have_them(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn login_keys_are_stored_and_rebound() {
        let (_pg, _, s) = store("login_keys").await;
        conformance::login_keys_are_stored_and_rebound(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn groups_fan_out_and_refuse() {
        let (_pg, _, s) = store("groups").await;
        conformance::groups_fan_out_and_refuse(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_group_text_waits_for_each_member_until_each_acks() {
        let (_pg, _, s) = store("group_acks").await;
        conformance::a_group_text_waits_for_each_member_until_each_acks(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn members_get_the_texts_of_their_time_in_the_group_in_queue_order() {
        let (_pg, _, s) = store("group_time").await;
        conformance::members_get_the_texts_of_their_time_in_the_group_in_queue_order(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pages_across_groups_come_in_queue_order() {
        let (_pg, _, s) = store("group_pages").await;
        conformance::pages_across_groups_come_in_queue_order(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn queues_are_bounded_per_recipient() {
        let (_pg, _, s) = store("queue_limits").await;
        conformance::queues_are_bounded_per_recipient(&s).await;
    }

    /// Two stores on one database, as two nodes: concurrent sends (with
    /// overlapping resends), re-key races, and an upload quota race.
    #[tokio::test(flavor = "multi_thread")]
    async fn two_nodes_race() {
        let (_pg, url, a) = store("race").await;
        let b = PostgresStore::connect(&url, &LOCAL).await.unwrap();
        a.create_user("alice", b"ka", None).await.unwrap();
        b.create_user("bob", b"kb", None).await.unwrap();
        a.request_friend("alice", "bob", b"req").await.unwrap();
        b.accept_friend("bob", "alice", b"acc").await.unwrap();
        let before = a.pending("bob", 0, 1000).await.unwrap().len();

        // 200 sends per node; ids 100..200 are sent by both.
        let mut tasks = Vec::new();
        for (node, range) in [(a.clone(), 0u16..200), (b.clone(), 100u16..300)] {
            for n in range {
                let s = node.clone();
                tasks.push(tokio::spawn(async move {
                    let mut id = [0u8; 16];
                    id[..2].copy_from_slice(&n.to_be_bytes());
                    let t = TextToQueue {
                        to: Target::Direct("bob".into()),
                        id: MessageId(id),
                        envelope: Arc::new(n.to_be_bytes().to_vec()),
                    };
                    s.enqueue_texts("alice", vec![t], QueueLimits::default())
                        .await
                        .unwrap()
                }));
            }
        }
        let (mut stored, mut dups) = (0, 0);
        for t in tasks {
            match t.await.unwrap().remove(0) {
                Queuing::Stored(to) => {
                    assert_eq!(to.len(), 1);
                    stored += 1;
                }
                Queuing::Duplicate => dups += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((stored, dups), (300, 100));
        let bob = b.pending("bob", 0, 10_000).await.unwrap();
        assert_eq!(bob.len(), before + 300);
        let bodies: HashSet<_> = bob.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(bodies.len(), before + 300);
        assert!(bob.windows(2).all(|w| w[0].0 < w[1].0));

        // Re-key races: both nodes move the group to the same epoch.
        let gid = a.create_group("team", "alice").await.unwrap();
        for epoch in 1..=10u64 {
            let ra = {
                let a = a.clone();
                tokio::spawn(async move {
                    a.rekey(
                        gid,
                        epoch,
                        Membership::Add(vec![format!("a{epoch}")]),
                        vec![(format!("a{epoch}"), b"k".to_vec())],
                    )
                    .await
                })
            };
            let rb = {
                let b = b.clone();
                tokio::spawn(async move {
                    b.rekey(
                        gid,
                        epoch,
                        Membership::Add(vec![format!("b{epoch}")]),
                        vec![(format!("b{epoch}"), b"k".to_vec())],
                    )
                    .await
                })
            };
            let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
            assert!(
                matches!(
                    (&ra, &rb),
                    (Ok(_), Err(StoreError::StaleEpoch)) | (Err(StoreError::StaleEpoch), Ok(_))
                ),
                "epoch {epoch}: {ra:?} / {rb:?}"
            );
        }
        let g = b.group(gid).await.unwrap().unwrap();
        assert_eq!((g.epoch, g.members.len()), (10, 11));

        // Upload quota race: room for one of two.
        let ups: Vec<_> = [(a.clone(), 1u8, "n1"), (b.clone(), 2u8, "n2")]
            .into_iter()
            .map(|(s, n, owner)| {
                tokio::spawn(async move {
                    s.begin_blob(
                        "alice",
                        MessageId([n; 16]),
                        100,
                        vec!["bob".into()],
                        vec![n],
                        150,
                        owner,
                    )
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for u in ups {
            results.push(u.await.unwrap());
        }
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.contains(&Err(StoreError::QuotaExceeded)));
    }

    /// Two nodes resending the same two texts in opposite orders can
    /// deadlock in PostgreSQL; the loser is retried and each text is
    /// stored exactly once.
    #[tokio::test(flavor = "multi_thread")]
    async fn opposite_order_resends_survive_deadlocks() {
        let (_pg, url, a) = store("deadlock").await;
        let b = PostgresStore::connect(&url, &LOCAL).await.unwrap();
        a.create_user("bob", b"kb", None).await.unwrap();
        a.request_friend("alice", "bob", b"req").await.unwrap();
        b.accept_friend("bob", "alice", b"acc").await.unwrap();
        for round in 0..20u8 {
            let (x, y) = (2 * round, 2 * round + 1);
            let batch = |first: u8, second: u8| {
                vec![
                    text(Target::Direct("bob".into()), first, &[first]),
                    text(Target::Direct("bob".into()), second, &[second]),
                ]
            };
            let (sa, sb) = (a.clone(), b.clone());
            let (ba, bb) = (batch(x, y), batch(y, x));
            let ta =
                tokio::spawn(
                    async move { sa.enqueue_texts("alice", ba, QueueLimits::default()).await },
                );
            let tb =
                tokio::spawn(
                    async move { sb.enqueue_texts("alice", bb, QueueLimits::default()).await },
                );
            let (ra, rb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
            let stored = ra
                .iter()
                .chain(&rb)
                .filter(|q| matches!(q, Queuing::Stored(_)))
                .count();
            let dups = ra
                .iter()
                .chain(&rb)
                .filter(|q| **q == Queuing::Duplicate)
                .count();
            assert_eq!((stored, dups), (2, 2), "round {round}: {ra:?} {rb:?}");
        }
        assert_eq!(a.pending("bob", 0, 1000).await.unwrap().len(), 41);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unreachable_and_tls_are_one_sentence_errors() {
        let port = fastchat_testkit::free_tcp_port();
        let url = format!("postgres://fastchat@127.0.0.1:{port}/fastchat?connect_timeout=2");
        match PostgresStore::connect(&url, &LOCAL).await {
            Err(StoreError::Unavailable(why)) => {
                assert!(
                    why.starts_with("the PostgreSQL store is unreachable"),
                    "{why}"
                )
            }
            other => panic!("{:?}", other.err()),
        }
        // TLS asked for in the URL needs a CA to check the server with.
        match PostgresStore::connect("postgres://u@127.0.0.1/db?sslmode=require", &LOCAL).await {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("--store-ca"), "{why}"),
            other => panic!("{:?}", other.err()),
        }
        // Another machine is reached over TLS only, unless asked otherwise.
        match PostgresStore::connect("postgres://u@10.255.0.1/db", &LOCAL).await {
            Err(StoreError::Unavailable(why)) => {
                assert!(why.contains("over TLS only"), "{why}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    /// With the CA of the server's certificate, every connection is TLS
    /// (the server says so); with another CA, nothing connects.
    #[tokio::test(flavor = "multi_thread")]
    async fn tls_to_postgresql_is_verified_against_the_given_ca() {
        let certs = tempfile::tempdir().unwrap();
        fastchat_certs::generate(certs.path(), &[], false, 1).unwrap();
        let server_dir = fastchat_certs::role_dir(certs.path(), fastchat_certs::Role::Bus);
        let pg = PgServer::start_with_tls(
            &server_dir.join(fastchat_certs::NODE_CERT),
            &server_dir.join(fastchat_certs::NODE_KEY),
        );
        let url = pg.create_database("tls");
        let ca = fastchat_certs::load_certs(&certs.path().join(fastchat_certs::CA_CERT)).unwrap();
        let store = PostgresStore::connect(&url, &PostgresTls::Verify(ca))
            .await
            .unwrap();
        store.create_user("alice", b"k", None).await.unwrap();
        let plain = pg.psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'fastchat-node' AND NOT s.ssl",
        );
        let secured = pg.psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'fastchat-node' AND s.ssl",
        );
        assert_eq!(plain.trim(), "0");
        assert_ne!(secured.trim(), "0");

        let other = tempfile::tempdir().unwrap();
        fastchat_certs::generate(other.path(), &[], false, 1).unwrap();
        let wrong =
            fastchat_certs::load_certs(&other.path().join(fastchat_certs::CA_CERT)).unwrap();
        let url = format!("{url}?connect_timeout=5");
        assert!(
            PostgresStore::connect(&url, &PostgresTls::Verify(wrong))
                .await
                .is_err()
        );
    }
}
