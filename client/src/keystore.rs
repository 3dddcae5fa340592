//! The client's keystore: one SQLite file in the user's home with the
//! identity key, the cluster profile (node address and CA), peers with their
//! keys, and the local message history.

use std::path::Path;
use std::sync::Arc;

use crate::error::ClientError;
use crate::room::{Change, EpochKeys};
use crate::transfer::DownloadRecord;
pub use crate::types::{
    Attachment, Conversation, GroupState, HistoryEntry, InboxItem, InboxKind, MessageState, Peer,
    PeerState,
};
use fastchat_crypto::{ConversationKey, Identity, SigningIdentity};
use fastchat_proto::group::RosterEntry;
use fastchat_sqlite::{id_from_key, id_key};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::LazyLock;

use crate::sql_rows::{self, SHAPES};

// A friend's history is found through `peer_spans`, not an index over every
// direct row: each statement that stores rows notes, for each friend among
// them, the positions it filled (`first..=last`, which may hold other
// friends' rows too). A row then costs no index entry; a statement of up
// to 32 rows costs one span per friend in it. That index was an eighth of
// a client's instructions per text and a page written per commit. Spans of
// one friend never overlap (each statement fills its own positions), so
// walking them newest first and each range backwards gives the history
// newest first with no sort. A group's history is found the same way,
// through `group_spans`: its index over (group, position) took an entry
// per group row (received in transactions of 50, 9.25k instructions per
// row with it, 7.79k without; a transaction of one row pays 1.3k more for
// its span than for the entry, 45.1k against 43.8k).
//
// What is received and not yet shown is found the same way, through
// `unshown_spans`: each statement storing received rows notes the
// positions it filled, all of them unshown. A partial index over every
// unshown row cost a B-tree insert per received text (1.7k of a client's
// 19.8k instructions per drained text) for a list read only when `recv`
// prints or a conversation is opened. A span goes once every row in it
// was shown.
//
// Receipts mark our sent texts delivered through `receipt_spans`: each
// receipt's positions, in runs of consecutive ones, merged with the
// friend's spans they overlap or touch, so one friend's spans never
// overlap and a text is marked when the first span ending at or after it
// starts at or before it. Rewriting each ~300-byte history row put every
// page a receipt named in the log (3.1-3.6 µs per marked text against
// 1.3-2.0); a mark row per text (`receipt_marks`, its position and the
// friend) still cost a uniqueness seek and a B-tree insert per id, 1.0k
// of a client's instructions per drained text (finding each id's position
// cost 2.2k more: see `crate::recent_sent`). A span's positions may hold
// other friends' rows too: a mark counts only on a sent direct text to the
// span's own friend.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings(
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS peers(
    name TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    signing_key BLOB,
    state TEXT NOT NULL,
    conv_key BLOB,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS groups(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    admin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    member INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_epochs(
    group_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    key BLOB NOT NULL,
    roster BLOB NOT NULL,
    PRIMARY KEY(group_id, epoch)
);
CREATE TABLE IF NOT EXISTS messages(
    pos INTEGER PRIMARY KEY,
    id_hi INTEGER NOT NULL,
    id_lo INTEGER NOT NULL,
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    kind TEXT NOT NULL,
    grp TEXT,
    member TEXT,
    att_path TEXT,
    att_bytes INTEGER,
    att_sha256 TEXT,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0,
    UNIQUE(id_hi, id_lo)
);
CREATE TABLE IF NOT EXISTS peer_spans(
    peer TEXT NOT NULL,
    last INTEGER NOT NULL,
    first INTEGER NOT NULL,
    PRIMARY KEY(peer, last)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_spans(
    grp TEXT NOT NULL,
    last INTEGER NOT NULL,
    first INTEGER NOT NULL,
    PRIMARY KEY(grp, last)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads(
    id BLOB PRIMARY KEY,
    record BLOB NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS downloads(
    sender TEXT NOT NULL,
    id BLOB NOT NULL,
    record BLOB NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY(sender, id)
);
CREATE TABLE IF NOT EXISTS unshown_spans(first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS receipt_spans(peer TEXT NOT NULL, last INTEGER NOT NULL, first INTEGER NOT NULL, PRIMARY KEY(peer, last)) WITHOUT ROWID;
";

/// The received rows not yet shown, as `m`, found through their spans.
/// The unary `+` keeps the flags out of the plan: SQLite otherwise builds
/// an automatic index over the whole history to test them (checked by a
/// test's query plan).
const UNSHOWN_ROWS: &str = "FROM unshown_spans AS s CROSS JOIN messages AS m \
     ON m.pos BETWEEN s.first AND s.last WHERE +m.shown = 0 AND +m.outgoing = 0";

/// Deletes the spans whose rows were all shown.
const DROP_SHOWN_SPANS: &str = "DELETE FROM unshown_spans AS s WHERE NOT EXISTS \
     (SELECT 1 FROM messages AS m \
      WHERE m.pos BETWEEN s.first AND s.last AND +m.shown = 0 AND +m.outgoing = 0)";

/// Our texts the node accepted, into the history (see [`sql_rows`]).
static SENT_SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| {
    sql_rows::statements(
        "INSERT OR IGNORE INTO messages(id_hi, id_lo, peer, outgoing, kind, grp, body, sent_at, received_at, state, shown) VALUES ",
        "(?1, ?2, ?3, 1, 'text', ?4, ?5, ?6, ?6, ?7, 1)",
        7,
        "",
    )
});

/// The positions of our history's rows with these ids (`?1` on); ids of
/// nothing find nothing. Each id is looked up in the id index alone, which
/// holds its position: checking each text's row as well (ours, direct, to
/// that friend, still "sent") fetched the row per id, 9.6k instructions per
/// marked text, as much as storing it. The history checks a receipt's
/// mark against its row when it reads it ([`history_columns`]).
static POSITIONS_SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| {
    sql_rows::statements(
        "SELECT m.pos FROM (VALUES ",
        "(?1, ?2)",
        2,
        ") AS v JOIN messages AS m ON m.id_hi = v.column1 AND m.id_lo = v.column2",
    )
});

/// Received items, skipping ids already stored.
static INBOX_SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| {
    sql_rows::statements(
        "INSERT OR IGNORE INTO messages(id_hi, id_lo, peer, outgoing, kind, grp, member, body, sent_at, received_at, state, shown, att_path, att_bytes, att_sha256) VALUES ",
        "(?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9, 'received', 0, ?10, ?11, ?12)",
        12,
        "",
    )
});

/// Received texts (no member, no attachment), the common case: binding the
/// four columns they leave empty (the member, the attachment's three) and
/// the kind, and clearing those bindings again, was a twentieth of storing
/// each.
static TEXT_INBOX_SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| {
    sql_rows::statements(
        "INSERT OR IGNORE INTO messages(id_hi, id_lo, peer, outgoing, kind, grp, body, sent_at, received_at, state, shown) VALUES ",
        "(?1, ?2, ?3, 0, 'text', ?4, ?5, ?6, ?7, 'received', 0)",
        7,
        "",
    )
});

/// The schema's fingerprint, kept in the file's `user_version`: any edit
/// of [`SCHEMA`] changes it, so the next open applies the edit.
const SCHEMA_VERSION: i64 = fingerprint(SCHEMA);

/// FNV-1a of `text`, folded to a positive 31-bit number.
const fn fingerprint(text: &str) -> i64 {
    let bytes = text.as_bytes();
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    (hash & 0x7fff_ffff) as i64
}

/// Where the cluster is and how to trust it.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The user's name.
    pub name: String,
    /// The balancer's address.
    pub server: String,
    /// The cluster CA, PEM.
    pub ca_pem: Vec<u8>,
}

fn conversation_filter(c: &Conversation) -> (&'static str, &str) {
    match c {
        Conversation::Friend(n) => ("grp IS NULL AND peer = ?1", n.as_str()),
        Conversation::Group(g) => ("grp = ?1", g.as_str()),
    }
}

fn row_to_history(r: &rusqlite::Row<'_>, me: &str) -> rusqlite::Result<HistoryEntry> {
    let peer: String = r.get(2)?;
    let outgoing: bool = r.get(3)?;
    let grp: Option<String> = r.get(9)?;
    Ok(HistoryEntry {
        id: id_from_key(r.get(0)?, r.get(1)?),
        from: if outgoing {
            me.to_string()
        } else {
            peer.clone()
        },
        outgoing,
        kind: InboxKind::parse(&r.get::<_, String>(4)?),
        text: r.get(5)?,
        sent_at_ms: r.get::<_, i64>(6)? as u64,
        state: MessageState::parse(&r.get::<_, String>(7)?),
        path: r.get(8)?,
        member: r.get(10)?,
        conversation: match grp {
            Some(g) => Conversation::Group(g),
            None => Conversation::Friend(peer),
        },
    })
}

/// The newest page of a group's history: its spans newest first, each
/// range of positions backwards, and stops after the page.
static GROUP_HISTORY_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = history_columns("m.");
    format!(
        "SELECT {columns} FROM group_spans AS s \
           JOIN messages AS m ON m.pos BETWEEN s.first AND s.last \
         WHERE s.grp = ?1 AND m.grp = ?1 \
         ORDER BY s.last DESC, m.pos DESC LIMIT ?2"
    )
});

/// The newest page of a friend's history: their spans newest first, each
/// range of positions backwards, and stops after the page.
static FRIEND_HISTORY_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns = history_columns("m.");
    format!(
        "SELECT {columns} FROM peer_spans AS s \
           JOIN messages AS m ON m.pos BETWEEN s.first AND s.last \
         WHERE s.peer = ?1 AND m.peer = ?1 AND m.grp IS NULL \
         ORDER BY s.last DESC, m.pos DESC LIMIT ?2"
    )
});

/// The columns [`row_to_history`] reads, of the `messages` row named by
/// `t` (`"messages."` or `"m."`; never bare, or the span's own `peer`
/// would answer inside its subquery): a sent direct text is delivered once
/// a receipt from the friend it went to marked it, that is when the first
/// of that friend's `receipt_spans` ending at or after it starts at or
/// before it (a friend's spans never overlap).
fn history_columns(t: &str) -> String {
    format!(
        "{t}id_hi, {t}id_lo, {t}peer, {t}outgoing, {t}kind, {t}body, {t}sent_at, \
         CASE WHEN {t}state = 'sent' AND {t}outgoing = 1 AND {t}grp IS NULL \
           AND (SELECT d.first FROM receipt_spans AS d WHERE d.peer = {t}peer AND d.last >= {t}pos \
                ORDER BY d.last LIMIT 1) <= {t}pos \
         THEN 'delivered' ELSE {t}state END, \
         {t}att_path, {t}grp, {t}member"
    )
}

/// Whose spans a stored row joins: a friend's (`peer_spans`, its direct
/// rows) or a group's (`group_spans`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SpanOf<'a> {
    Friend(&'a str),
    Group(&'a str),
}

/// A message the node has accepted from us, for the history.
pub struct SentRecord<'a> {
    /// Its id.
    pub id: [u8; 16],
    /// The friend it went to, or the group's name.
    pub to: &'a str,
    /// The group's name, for a group text.
    pub group: Option<&'a str>,
    /// What it said.
    pub text: &'a str,
    /// When we sent it.
    pub sent_at_ms: u64,
    /// Stored on the node, or already in the recipient's hands.
    pub state: MessageState,
}

/// A saved transfer: its sender (empty for our uploads), id and record.
pub type SavedTransfer = (String, [u8; 16], Vec<u8>);

/// Which transfer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfers {
    /// Images we send.
    Uploads,
    /// Images we receive.
    Downloads,
}

/// Where a transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferState {
    /// A download announced to us, not yet in place.
    Pending,
    /// An upload the node does not have all of yet.
    Uploading,
    /// A download in place whose node has not been told yet.
    Placed,
    /// Finished.
    Done,
    /// Given up (the node refused it, or the file failed its checks).
    Failed,
}

impl TransferState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Uploading => "uploading",
            Self::Placed => "placed",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// The open keystore.
pub struct Keystore {
    conn: Connection,
    /// Checkpoints the log off the commit path; stops once `conn` closes.
    _checkpointer: fastchat_sqlite::Checkpointer,
    vault: Vault,
    /// Friends' keys with their ciphers ready, so a text costs no lookup.
    /// Dropped for a peer whenever it is written, and whole on rollback.
    /// These maps are keyed by our own friends and groups, so they hash
    /// with foldhash: SipHash's resistance to chosen keys bought nothing
    /// here and cost ~190 instructions per text sealed or opened.
    friend_keys: std::cell::RefCell<foldhash::HashMap<String, Arc<ConversationKey>>>,
    /// Groups' keys (ciphers ready) and rosters by (group, epoch), and
    /// groups' names: a group text costs no roster decode. An epoch never
    /// changes once written; both are dropped on rollback.
    epochs: std::cell::RefCell<foldhash::HashMap<(u64, u64), Arc<EpochKeys>>>,
    group_names: std::cell::RefCell<foldhash::HashMap<u64, String>>,
    /// Where our latest sent texts are, for their receipts; dropped on
    /// rollback.
    recent_sent: std::cell::RefCell<crate::recent_sent::RecentSent>,
}

/// How the keystore's secrets are stored.
enum Vault {
    /// No passphrase was set: secrets are stored as they are (the file is
    /// mode 0600).
    Plain,
    /// Secrets are sealed under this key, derived from the passphrase.
    Sealed(Box<ConversationKey>),
    /// A passphrase protects the secrets and none was given.
    Locked,
}

/// Salt bytes for the passphrase key derivation.
const KDF_SALT: usize = 16;

/// The key argon2id derives from `passphrase` and `salt`.
fn derive(passphrase: &str, salt: &[u8]) -> Result<ConversationKey, ClientError> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| ClientError::KeyDerivation(e.to_string()))?;
    Ok(ConversationKey::from_bytes(*key))
}

impl Vault {
    fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self {
            Vault::Plain => Ok(plain.to_vec()),
            Vault::Sealed(k) => {
                let sealed = k.seal(label.as_bytes(), plain)?;
                let mut out = sealed.nonce.to_vec();
                out.extend_from_slice(&sealed.ciphertext);
                Ok(out)
            }
            Vault::Locked => Err(ClientError::PassphraseNeeded),
        }
    }

    fn open(&self, label: &str, stored: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        match self {
            Vault::Plain => Ok(zeroize::Zeroizing::new(stored.to_vec())),
            Vault::Sealed(k) => {
                let corrupt = || ClientError::Damaged(format!("the sealed '{label}' is corrupt"));
                if stored.len() < 12 {
                    return Err(corrupt());
                }
                let sealed = fastchat_proto::envelope::Sealed {
                    nonce: stored[..12].try_into().expect("12 bytes"),
                    ciphertext: stored[12..].to_vec(),
                };
                k.open(label.as_bytes(), &sealed)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|_| corrupt())
            }
            Vault::Locked => Err(ClientError::PassphraseNeeded),
        }
    }
}

fn open_conn(path: &Path) -> Result<(Connection, fastchat_sqlite::Checkpointer), ClientError> {
    // Owner-only before SQLite opens it: SQLite gives the -wal and -shm
    // files the database file's mode, so they are never readable by others.
    crate::private::create_file(path).map_err(ClientError::io(path))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        crate::private::restrict(Path::new(&side));
    }
    let mut conn = Connection::open(path)?;
    // Room for every shape of the many-row statements (`sql_rows`) beside
    // the others.
    conn.set_prepared_statement_cache_capacity(64);
    fastchat_sqlite::stable_plans(&conn)?;
    // The log and its index stay between sessions (emptied on close): made
    // anew at each start they were a third of a client's start, the file
    // system searching for a free inode each time.
    conn.file_control(Some("main"), rusqlite::FileControl::PersistWal(&mut 1))?;
    // A 256 KiB page cache: writes land at the right edge of the messages
    // table and its indexes, which stay cached; the rest is in the OS's
    // cache. SQLite's default 2 MiB grew with every page a user wrote,
    // each new page a `malloc` that glibc served by growing its heap
    // (`mprotect`) and a page fault: 5% of a client's CPU at load (perf).
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; \
         PRAGMA journal_size_limit=4194304; PRAGMA cache_size=-256;",
    )?;
    // Parsing the schema batch was a quarter of opening a keystore: it runs
    // only when the file was made or last opened with another schema.
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA)?;
        spans_from_peer_index(&tx)?;
        spans_from_group_index(&tx)?;
        unshown_spans_from_index(&tx)?;
        marks_by_position(&tx)?;
        ids_as_integers(&tx)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    let checkpointer = fastchat_sqlite::Checkpointer::start(path, &mut conn)?;
    Ok((conn, checkpointer))
}

/// Older keystores keep their receipts' marks, each becoming a span of its
/// text's position alone: `delivered_marks` (from before marks named their
/// friend, so the friend its text went to), `delivered_to` (marks keyed by
/// the text's id, with the friend whose receipt named it) and
/// `receipt_marks` (a row per marked position and friend).
fn marks_by_position(tx: &Connection) -> Result<(), rusqlite::Error> {
    migrate_if_present(
        tx,
        ("table", "receipt_marks"),
        "INSERT OR IGNORE INTO receipt_spans(peer, last, first) \
           SELECT peer, pos, pos FROM receipt_marks; \
         DROP TABLE receipt_marks;",
    )?;
    for (table, peer) in [("delivered_marks", "m.peer"), ("delivered_to", "d.peer")] {
        migrate_if_present(
            tx,
            ("table", table),
            &format!(
                "INSERT OR IGNORE INTO receipt_spans(peer, last, first) \
                   SELECT {peer}, m.pos, m.pos FROM {table} AS d JOIN messages AS m ON m.id = d.id; \
                 DROP TABLE {table};"
            ),
        )?;
    }
    Ok(())
}

/// A keystore whose history keyed each message by its id as a 16-byte
/// blob gets the two-integer key ([`id_key`]): the table is built again
/// under [`SCHEMA`], every row at its own position (which `peer_spans` and
/// `receipt_spans` name). Runs after the migrations that read the old ids.
fn ids_as_integers(tx: &Connection) -> Result<(), rusqlite::Error> {
    let blob_ids: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'id'",
        [],
        |r| r.get(0),
    )?;
    if blob_ids == 0 {
        return Ok(());
    }
    tx.execute_batch(
        "ALTER TABLE messages RENAME TO messages_by_blob; \
         DROP INDEX IF EXISTS messages_in_groups; DROP INDEX IF EXISTS messages_unshown;",
    )?;
    tx.execute_batch(SCHEMA)?;
    const KEPT: &str = "peer, outgoing, kind, grp, member, att_path, att_bytes, att_sha256, \
                        body, sent_at, received_at, state, shown";
    let mut read = tx.prepare(&format!("SELECT pos, id, {KEPT} FROM messages_by_blob"))?;
    let mut write = tx.prepare(&format!(
        "INSERT OR IGNORE INTO messages(pos, id_hi, id_lo, {KEPT}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let (hi, lo) = id_key(&row.get::<_, Vec<u8>>(1)?);
        let mut values: Vec<rusqlite::types::Value> = vec![row.get(0)?, hi.into(), lo.into()];
        for i in 2..2 + KEPT.split(',').count() {
            values.push(row.get(i)?);
        }
        write.execute(rusqlite::params_from_iter(values))?;
    }
    drop(rows);
    tx.execute_batch("DROP TABLE messages_by_blob;")
}

/// A keystore made before `peer_spans` found a friend's history through an
/// index over every direct row: each such row becomes a span of its own
/// (exact, whatever the history's order) and the index goes.
fn spans_from_peer_index(tx: &Connection) -> Result<(), rusqlite::Error> {
    migrate_if_present(
        tx,
        ("index", "messages_by_peer"),
        "INSERT OR IGNORE INTO peer_spans(peer, last, first) \
           SELECT peer, pos, pos FROM messages WHERE grp IS NULL; \
         DROP INDEX messages_by_peer;",
    )
}

/// A keystore made before `group_spans` found a group's history through an
/// index over its group rows (`messages_in_groups`, or the older
/// `messages_by_group`): each group row becomes a span of its own and the
/// index goes. Runs before `ids_as_integers`, which keeps every position.
fn spans_from_group_index(tx: &Connection) -> Result<(), rusqlite::Error> {
    const SPANS: &str = "INSERT OR IGNORE INTO group_spans(grp, last, first) \
           SELECT grp, pos, pos FROM messages WHERE grp IS NOT NULL; \
         DROP INDEX IF EXISTS messages_in_groups; DROP INDEX IF EXISTS messages_by_group;";
    // Whichever is there: the first that is drops both, so the second
    // check finds nothing.
    for index in ["messages_in_groups", "messages_by_group"] {
        migrate_if_present(tx, ("index", index), SPANS)?;
    }
    Ok(())
}

/// A keystore made before `unshown_spans` found its unshown rows through a
/// partial index: each becomes a span of its own and the index goes.
fn unshown_spans_from_index(tx: &Connection) -> Result<(), rusqlite::Error> {
    migrate_if_present(
        tx,
        ("index", "messages_unshown"),
        "INSERT OR IGNORE INTO unshown_spans(first, last) \
           SELECT pos, pos FROM messages WHERE shown = 0 AND outgoing = 0; \
         DROP INDEX messages_unshown;",
    )
}

/// Runs `migration` if the keystore still has the older schema's object
/// `(type, name)`, which the migration drops.
fn migrate_if_present(
    tx: &Connection,
    (kind, name): (&str, &str),
    migration: &str,
) -> Result<(), rusqlite::Error> {
    let present: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = ?1 AND name = ?2",
        [kind, name],
        |r| r.get(0),
    )?;
    if present > 0 {
        tx.execute_batch(migration)?;
    }
    Ok(())
}

impl Keystore {
    /// Creates a keystore for a freshly registered identity.
    pub fn create(
        path: &Path,
        profile: &Profile,
        identity: &Identity,
        signing: &SigningIdentity,
        passphrase: Option<&str>,
    ) -> Result<Self, ClientError> {
        let (mut conn, checkpointer) = open_conn(path)?;
        let mut salt = [0u8; KDF_SALT];
        let vault = match passphrase {
            Some(p) => {
                fastchat_crypto::random_bytes(&mut salt)?;
                Vault::Sealed(Box::new(derive(p, &salt)?))
            }
            None => Vault::Plain,
        };
        let tx = conn.transaction()?;
        let der = vault.seal("identity", &identity.to_pkcs8_der()?)?;
        let seed = vault.seal("signing_key", &signing.seed()[..])?;
        let mut rows: Vec<(&str, Vec<u8>)> = vec![
            ("name", profile.name.as_bytes().to_vec()),
            ("server", profile.server.as_bytes().to_vec()),
            ("ca_pem", profile.ca_pem.clone()),
            ("identity", der),
            ("signing_key", seed),
        ];
        if passphrase.is_some() {
            rows.push(("kdf_salt", salt.to_vec()));
            rows.push(("kdf_check", vault.seal("check", b"fastchat keystore")?));
        }
        for (k, v) in rows {
            tx.execute(
                "INSERT OR REPLACE INTO settings(key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        tx.commit()?;
        Ok(Self {
            conn,
            _checkpointer: checkpointer,
            vault,
            friend_keys: Default::default(),
            recent_sent: Default::default(),
            epochs: Default::default(),
            group_names: Default::default(),
        })
    }

    /// Whether a passphrase protects this keystore's secrets.
    pub fn is_protected(&self) -> bool {
        !matches!(self.vault, Vault::Plain)
    }

    /// Opens an existing keystore; `NotRegistered` if there is none. With a
    /// protected keystore and no passphrase, the profile is readable but the
    /// secrets are not (`PassphraseNeeded`); a wrong one is `WrongPassphrase`.
    pub fn open(home: &Path) -> Result<Self, ClientError> {
        Self::open_with(home, None)
    }

    /// [`Keystore::open`] with the passphrase, if one is set.
    pub fn open_with(home: &Path, passphrase: Option<&str>) -> Result<Self, ClientError> {
        let path = home.join(crate::KEYSTORE_FILE);
        if !path.exists() {
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        }
        let (conn, checkpointer) = open_conn(&path)?;
        let mut ks = Self {
            conn,
            _checkpointer: checkpointer,
            vault: Vault::Plain,
            friend_keys: Default::default(),
            recent_sent: Default::default(),
            epochs: Default::default(),
            group_names: Default::default(),
        };
        if ks.setting("identity")?.is_none() {
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        }
        if let Some(salt) = ks.setting("kdf_salt")? {
            ks.vault = match passphrase {
                Some(p) => {
                    let vault = Vault::Sealed(Box::new(derive(p, &salt)?));
                    let check = ks.required("kdf_check")?;
                    if vault.open("check", &check).is_err() {
                        return Err(ClientError::WrongPassphrase);
                    }
                    vault
                }
                None => Vault::Locked,
            };
        }
        Ok(ks)
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn required(&self, key: &str) -> Result<Vec<u8>, ClientError> {
        self.setting(key)?
            .ok_or_else(|| ClientError::Damaged(format!("it lacks '{key}'")))
    }

    /// The stored profile of the identity in `home`, without logging in.
    pub fn profile_of(home: &Path) -> Result<Profile, ClientError> {
        Self::open(home)?.profile()
    }

    /// The stored profile.
    pub fn profile(&self) -> Result<Profile, ClientError> {
        let text =
            |v: Vec<u8>| String::from_utf8(v).map_err(|e| ClientError::Damaged(e.to_string()));
        Ok(Profile {
            name: text(self.required("name")?)?,
            server: text(self.required("server")?)?,
            ca_pem: self.required("ca_pem")?,
        })
    }

    /// The user's identity key.
    pub fn identity(&self) -> Result<Identity, ClientError> {
        let der = self.vault.open("identity", &self.required("identity")?)?;
        Ok(Identity::from_pkcs8_der(&der)?)
    }

    /// The user's Ed25519 signing key.
    pub fn signing_identity(&self) -> Result<SigningIdentity, ClientError> {
        let seed = self
            .vault
            .open("signing_key", &self.required("signing_key")?)?;
        Ok(SigningIdentity::from_seed(&seed)?)
    }

    /// The user's Ed25519 login key, or a new one (stored) if this keystore
    /// has none yet (it was made before login keys). A login binds it at the
    /// node whenever the node holds another.
    pub fn login_identity(&self) -> Result<SigningIdentity, ClientError> {
        if let Some(sealed) = self.setting("login_key")? {
            let seed = self.vault.open("login_key", &sealed)?;
            return Ok(SigningIdentity::from_seed(&seed)?);
        }
        let key = SigningIdentity::generate()?;
        self.set_login_identity(&key)?;
        Ok(key)
    }

    /// Stores `key` as the user's login key.
    pub fn set_login_identity(&self, key: &SigningIdentity) -> Result<(), ClientError> {
        let sealed = self.vault.seal("login_key", &key.seed()[..])?;
        self.conn.execute(
            "INSERT OR REPLACE INTO settings(key, value) VALUES ('login_key', ?1)",
            params![sealed],
        )?;
        Ok(())
    }

    /// Opens a transaction that the following calls join, until
    /// [`Keystore::commit`] (or [`Keystore::rollback`]).
    pub fn begin(&self) -> Result<(), ClientError> {
        fastchat_sqlite::run_cached(&self.conn, "BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Commits the transaction [`Keystore::begin`] opened.
    pub fn commit(&self) -> Result<(), ClientError> {
        fastchat_sqlite::run_cached(&self.conn, "COMMIT")?;
        Ok(())
    }

    /// Abandons the transaction [`Keystore::begin`] opened.
    pub fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.recent_sent.borrow_mut().clear();
        self.friend_keys.borrow_mut().clear();
        self.epochs.borrow_mut().clear();
        self.group_names.borrow_mut().clear();
    }

    /// Runs `f` in one transaction: committed if it succeeds, rolled back
    /// (with every cache it touched) if not.
    pub(crate) fn transaction<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.begin()?;
        match f(self) {
            Ok(v) => match self.commit() {
                Ok(()) => Ok(v),
                Err(e) => {
                    // Not committed: nothing it cached may stay.
                    self.rollback();
                    Err(e)
                }
            },
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Makes a change a protocol room decided on.
    pub(crate) fn apply(&self, change: &Change) -> Result<(), ClientError> {
        match change {
            Change::PutPeer(peer) => self.put_peer(peer),
            Change::PutGroupEpoch {
                id,
                name,
                admin,
                epoch,
                key,
                roster,
            } => self.put_group_epoch(*id, name, admin, *epoch, key, roster),
            Change::LeaveGroup { id, epoch } => self.leave_group(*id, *epoch),
            Change::MarkDelivered { peer, ids } => self.mark_delivered(peer, ids),
            Change::AddDownload(rec) => self.add_download(rec),
        }
    }

    fn add_download(&self, rec: &DownloadRecord) -> Result<(), ClientError> {
        let record = fastchat_proto::frame::encode_body(rec)?;
        self.put_transfer(
            Transfers::Downloads,
            &rec.from,
            &rec.id,
            &record,
            TransferState::Pending,
        )
    }

    /// The conversation key of friend `name`, or `None` if they are not
    /// (yet) a friend.
    /// Shared, not copied: a copy of the expanded cipher cost a thousand
    /// instructions per text.
    pub fn friend_key(&self, name: &str) -> Result<Option<Arc<ConversationKey>>, ClientError> {
        if let Some(k) = self.friend_keys.borrow().get(name) {
            return Ok(Some(k.clone()));
        }
        match self.peer(name)? {
            Some(Peer {
                state: PeerState::Friend,
                key: Some(k),
                ..
            }) => {
                let k = Arc::new(k);
                self.friend_keys
                    .borrow_mut()
                    .insert(name.to_string(), k.clone());
                Ok(Some(k))
            }
            _ => Ok(None),
        }
    }

    /// A peer by name.
    pub fn peer(&self, name: &str) -> Result<Option<Peer>, ClientError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT name, public_key, state, conv_key, signing_key FROM peers WHERE name = ?1",
            )?
            .query_row(params![name], row_to_peer)
            .optional()?;
        row.map(|r| self.unseal_peer(r)).transpose()
    }

    /// Every peer, by name.
    pub fn peers(&self) -> Result<Vec<Peer>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, public_key, state, conv_key, signing_key FROM peers ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_peer)?;
        let rows: Vec<(Peer, Option<Vec<u8>>)> = rows.collect::<Result<_, _>>()?;
        rows.into_iter().map(|r| self.unseal_peer(r)).collect()
    }

    fn unseal_peer(&self, (mut peer, key): (Peer, Option<Vec<u8>>)) -> Result<Peer, ClientError> {
        if let Some(sealed) = key {
            let plain = self
                .vault
                .open(&format!("peer-key:{}", peer.name), &sealed)?;
            let bytes: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::Damaged("a stored friend key is corrupt".into()))?;
            peer.key = Some(ConversationKey::from_bytes(bytes));
        }
        Ok(peer)
    }

    /// Inserts or replaces a peer.
    pub fn put_peer(&self, peer: &Peer) -> Result<(), ClientError> {
        self.friend_keys.borrow_mut().remove(&peer.name);
        self.conn.execute(
            "INSERT OR REPLACE INTO peers(name, public_key, state, conv_key, signing_key, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                peer.name,
                peer.public_key,
                peer.state.as_str(),
                peer.key
                    .as_ref()
                    .map(|k| self.vault.seal(&format!("peer-key:{}", peer.name), k.as_bytes()))
                    .transpose()?,
                peer.signing_key.map(|k| k.to_vec()),
                fastchat_proto::now_ms() as i64
            ],
        )?;
        Ok(())
    }

    /// Records messages the node has accepted from us.
    pub fn record_sent(&self, rows: &[SentRecord<'_>]) -> Result<(), ClientError> {
        for chunk in sql_rows::statement_chunks(rows) {
            let mut stmt = self
                .conn
                .prepare_cached(sql_rows::shape(&SENT_SQL, chunk.len()))?;
            for (i, r) in chunk.iter().enumerate() {
                let p = i * 7;
                let (hi, lo) = id_key(&r.id);
                stmt.raw_bind_parameter(p + 1, hi)?;
                stmt.raw_bind_parameter(p + 2, lo)?;
                stmt.raw_bind_parameter(p + 3, r.to)?;
                stmt.raw_bind_parameter(p + 4, r.group)?;
                stmt.raw_bind_parameter(p + 5, r.text)?;
                stmt.raw_bind_parameter(p + 6, r.sent_at_ms as i64)?;
                stmt.raw_bind_parameter(p + 7, r.state.as_str())?;
            }
            let stored = stmt.raw_execute()?;
            if stored == chunk.len() {
                // Every row went in, in order, at the positions up to the
                // last. Only a stored direct text gets a receipt: one
                // already delivered (handed off) or to a group never does.
                let first = self.conn.last_insert_rowid() - stored as i64 + 1;
                let mut recent = self.recent_sent.borrow_mut();
                for (i, r) in chunk.iter().enumerate() {
                    if r.state == MessageState::Sent && r.group.is_none() {
                        recent.note(id_key(&r.id), first + i as i64);
                    }
                }
            }
            self.note_spans(chunk.iter().map(|r| (r.to, r.group)), stored)?;
        }
        Ok(())
    }

    /// Notes that the rows the last statement stored, `stored` positions
    /// ending at the last row it inserted, hold direct rows of the friends
    /// and rows of the groups named by `conversations` (see `peer_spans`
    /// in [`SCHEMA`]): a span per friend and per group in it.
    fn note_spans<'a>(
        &self,
        conversations: impl Iterator<Item = (&'a str, Option<&'a str>)>,
        stored: usize,
    ) -> Result<(), ClientError> {
        if stored == 0 {
            return Ok(());
        }
        let last = self.conn.last_insert_rowid();
        let first = last - stored as i64 + 1;
        let mut noted: Vec<SpanOf<'a>> = Vec::new();
        for (peer, group) in conversations {
            let span = match group {
                Some(g) => SpanOf::Group(g),
                None => SpanOf::Friend(peer),
            };
            if noted.contains(&span) {
                continue;
            }
            let (sql, name) = match span {
                SpanOf::Friend(f) => (
                    "INSERT OR IGNORE INTO peer_spans(peer, last, first) VALUES (?1, ?2, ?3)",
                    f,
                ),
                SpanOf::Group(g) => (
                    "INSERT OR IGNORE INTO group_spans(grp, last, first) VALUES (?1, ?2, ?3)",
                    g,
                ),
            };
            self.conn
                .prepare_cached(sql)?
                .execute(params![name, last, first])?;
            noted.push(span);
        }
        Ok(())
    }

    /// Notes that the `stored` positions the last statement filled, ending
    /// at the last row it inserted, hold received rows not yet shown (see
    /// `unshown_spans` in [`SCHEMA`]).
    fn note_unshown(&self, stored: usize) -> Result<(), ClientError> {
        if stored > 0 {
            let last = self.conn.last_insert_rowid();
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO unshown_spans(first, last) VALUES (?1, ?2)")?
                .execute(params![last - stored as i64 + 1, last])?;
        }
        Ok(())
    }

    /// Forgets the spans whose rows were all shown.
    fn drop_shown_spans(conn: &Connection) -> Result<(), ClientError> {
        conn.prepare_cached(DROP_SHOWN_SPANS)?.execute([])?;
        Ok(())
    }

    /// Marks our texts to `peer` with these ids as delivered: their
    /// positions, in runs of consecutive ones, join `peer`'s receipt spans
    /// (see `receipt_spans` in [`SCHEMA`]).
    pub fn mark_delivered(&self, peer: &str, ids: &[[u8; 16]]) -> Result<(), ClientError> {
        let mut positions = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        {
            let recent = self.recent_sent.borrow();
            for id in ids {
                match recent.get(id_key(id)) {
                    Some(pos) => positions.push(pos),
                    None => unknown.push(*id),
                }
            }
        }
        for chunk in sql_rows::statement_chunks(&unknown) {
            let mut stmt = self
                .conn
                .prepare_cached(sql_rows::shape(&POSITIONS_SQL, chunk.len()))?;
            for (i, id) in chunk.iter().enumerate() {
                let (hi, lo) = id_key(id);
                stmt.raw_bind_parameter(2 * i + 1, hi)?;
                stmt.raw_bind_parameter(2 * i + 2, lo)?;
            }
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                positions.push(row.get::<_, i64>(0)?);
            }
        }
        positions.sort_unstable();
        positions.dedup();
        for run in positions.chunk_by(|a, b| a + 1 == *b) {
            self.add_receipt_span(peer, run[0], run[run.len() - 1])?;
        }
        Ok(())
    }

    /// Adds `first..=last` to `peer`'s receipt spans, merged with those it
    /// overlaps or touches, so that they never overlap. Those are the spans
    /// ending inside `first - 1..=last + 1` and the one after, if it starts
    /// by `last + 1`: two bounded seeks, however many spans there are.
    fn add_receipt_span(&self, peer: &str, first: i64, last: i64) -> Result<(), ClientError> {
        let (mut lo, mut hi) = (first, last);
        let mut merged: Vec<i64> = Vec::new();
        let mut inside = self.conn.prepare_cached(
            "SELECT last, first FROM receipt_spans WHERE peer = ?1 AND last BETWEEN ?2 AND ?3",
        )?;
        let mut rows = inside.query(params![peer, first - 1, last + 1])?;
        while let Some(row) = rows.next()? {
            let (end, start): (i64, i64) = (row.get(0)?, row.get(1)?);
            (lo, hi) = (lo.min(start), hi.max(end));
            merged.push(end);
        }
        drop(rows);
        let after: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT last, first FROM receipt_spans WHERE peer = ?1 AND last > ?2 \
                 ORDER BY last LIMIT 1",
            )?
            .query_row(params![peer, last + 1], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((end, start)) = after
            && start <= last + 1
        {
            (lo, hi) = (lo.min(start), hi.max(end));
            merged.push(end);
        }
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM receipt_spans WHERE peer = ?1 AND last = ?2")?;
        for end in merged {
            delete.execute(params![peer, end])?;
        }
        self.conn
            .prepare_cached("INSERT INTO receipt_spans(peer, last, first) VALUES (?1, ?2, ?3)")?
            .execute(params![peer, hi, lo])?;
        Ok(())
    }

    /// Stores received items, skipping ids already stored (and an id's
    /// repeats within `items`); returns the new ones, in order.
    pub fn insert_inbox(&self, items: Vec<InboxItem>) -> Result<Vec<InboxItem>, ClientError> {
        let now = fastchat_proto::now_ms() as i64;
        let mut fresh = Vec::with_capacity(items.len());
        for chunk in sql_rows::statement_chunks(&items) {
            let texts = chunk.iter().all(|item| {
                item.kind == InboxKind::Text && item.member.is_none() && item.attachment.is_none()
            });
            let shapes = if texts { &TEXT_INBOX_SQL } else { &INBOX_SQL };
            let mut stmt = self
                .conn
                .prepare_cached(sql_rows::shape(shapes, chunk.len()))?;
            for (i, item) in chunk.iter().enumerate() {
                let (hi, lo) = id_key(&item.id);
                if texts {
                    let p = i * 7;
                    stmt.raw_bind_parameter(p + 1, hi)?;
                    stmt.raw_bind_parameter(p + 2, lo)?;
                    stmt.raw_bind_parameter(p + 3, &item.from)?;
                    stmt.raw_bind_parameter(p + 4, &item.group)?;
                    stmt.raw_bind_parameter(p + 5, &item.text)?;
                    stmt.raw_bind_parameter(p + 6, item.sent_at_ms as i64)?;
                    stmt.raw_bind_parameter(p + 7, now)?;
                    continue;
                }
                let p = i * 12;
                let att = item.attachment.as_ref();
                stmt.raw_bind_parameter(p + 1, hi)?;
                stmt.raw_bind_parameter(p + 2, lo)?;
                stmt.raw_bind_parameter(p + 3, &item.from)?;
                stmt.raw_bind_parameter(p + 4, item.kind.as_str())?;
                stmt.raw_bind_parameter(p + 5, &item.group)?;
                stmt.raw_bind_parameter(p + 6, &item.member)?;
                stmt.raw_bind_parameter(p + 7, &item.text)?;
                stmt.raw_bind_parameter(p + 8, item.sent_at_ms as i64)?;
                stmt.raw_bind_parameter(p + 9, now)?;
                stmt.raw_bind_parameter(p + 10, att.map(|a| a.path.as_str()))?;
                stmt.raw_bind_parameter(p + 11, att.map(|a| a.bytes as i64))?;
                stmt.raw_bind_parameter(p + 12, att.map(|a| a.digest.as_str()))?;
            }
            let stored = stmt.raw_execute()?;
            if stored == chunk.len() {
                fresh.resize(fresh.len() + stored, true);
            } else {
                self.which_were_stored(chunk, stored, &mut fresh)?;
            }
            let conversations = chunk
                .iter()
                .map(|item| (item.from.as_str(), item.group.as_deref()));
            self.note_spans(conversations, stored)?;
            self.note_unshown(stored)?;
        }
        let mut fresh = fresh.into_iter();
        Ok(items
            .into_iter()
            .filter(|_| fresh.next().unwrap_or(false))
            .collect())
    }

    /// After a statement stored only `stored` of `chunk` (the others were
    /// there already, or repeated an id), pushes which of them it stored.
    /// The statement gave its rows the positions after the last one, one
    /// by one, ending at the last row it inserted: those positions hold
    /// exactly the ids it stored; each marks the first item carrying it.
    fn which_were_stored(
        &self,
        chunk: &[InboxItem],
        stored: usize,
        fresh: &mut Vec<bool>,
    ) -> Result<(), ClientError> {
        let mut ids: Vec<[u8; 16]> = match stored {
            0 => Vec::new(),
            _ => {
                let last = self.conn.last_insert_rowid();
                self.conn
                    .prepare_cached(
                        "SELECT id_hi, id_lo FROM messages WHERE pos > ?1 AND pos <= ?2",
                    )?
                    .query_map(params![last - stored as i64, last], |r| {
                        Ok(id_from_key(r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?
            }
        };
        ids.sort_unstable();
        let mut taken = vec![false; ids.len()];
        fresh.extend(chunk.iter().map(|item| match ids.binary_search(&item.id) {
            Ok(k) if !taken[k] => {
                taken[k] = true;
                true
            }
            _ => false,
        }));
        Ok(())
    }

    /// Saves (or replaces) a record of a transfer, `uploads` or `downloads`.
    pub fn put_transfer(
        &self,
        table: Transfers,
        sender: &str,
        id: &[u8; 16],
        record: &[u8],
        state: TransferState,
    ) -> Result<(), ClientError> {
        let state = state.as_str();
        // Records hold the transfer's key.
        let record = self.vault.seal(&transfer_label(table, id), record)?;
        match table {
            Transfers::Uploads => self.conn.execute(
                "INSERT OR REPLACE INTO uploads(id, record, state) VALUES (?1, ?2, ?3)",
                params![&id[..], record, state],
            ),
            Transfers::Downloads => self.conn.execute(
                "INSERT OR REPLACE INTO downloads(sender, id, record, state) VALUES (?1, ?2, ?3, ?4)",
                params![sender, &id[..], record, state],
            ),
        }?;
        Ok(())
    }

    /// Changes a transfer's state.
    pub fn set_transfer_state(
        &self,
        table: Transfers,
        sender: &str,
        id: &[u8; 16],
        state: TransferState,
    ) -> Result<(), ClientError> {
        let state = state.as_str();
        match table {
            Transfers::Uploads => self.conn.execute(
                "UPDATE uploads SET state = ?2 WHERE id = ?1",
                params![&id[..], state],
            ),
            Transfers::Downloads => self.conn.execute(
                "UPDATE downloads SET state = ?3 WHERE sender = ?1 AND id = ?2",
                params![sender, &id[..], state],
            ),
        }?;
        Ok(())
    }

    /// Transfers in `state`: the sender (empty for our uploads), id and record.
    pub fn transfers(
        &self,
        table: Transfers,
        state: TransferState,
    ) -> Result<Vec<SavedTransfer>, ClientError> {
        let state = state.as_str();
        let sql = match table {
            Transfers::Uploads => "SELECT '', id, record FROM uploads WHERE state = ?1",
            Transfers::Downloads => "SELECT sender, id, record FROM downloads WHERE state = ?1",
        };
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params![state], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = rows.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(sender, id, record)| {
                let id: [u8; 16] = id.try_into().unwrap_or([0; 16]);
                let record = self.vault.open(&transfer_label(table, &id), &record)?;
                Ok((sender, id, record.to_vec()))
            })
            .collect()
    }

    /// Whether a download is already known (any state).
    pub fn has_download(&self, sender: &str, id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM downloads WHERE sender = ?1 AND id = ?2")?
            .query_row(params![sender, &id[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The newest `limit` entries of a conversation, oldest first.
    pub fn history(
        &self,
        me: &str,
        conversation: &Conversation,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        let (sql, key) = match conversation {
            Conversation::Friend(name) => (&*FRIEND_HISTORY_SQL, name),
            Conversation::Group(name) => (&*GROUP_HISTORY_SQL, name),
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![key, limit as i64], |r| row_to_history(r, me))?;
        let mut out: Vec<HistoryEntry> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Unread (received, not yet shown) items per conversation.
    pub fn unread_counts(&self) -> Result<Vec<(Conversation, u64)>, ClientError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT m.peer, m.grp, COUNT(*) {UNSHOWN_ROWS} GROUP BY m.peer, m.grp"
        ))?;
        let rows = stmt.query_map([], |r| {
            let peer: String = r.get(0)?;
            let grp: Option<String> = r.get(1)?;
            let n: i64 = r.get(2)?;
            Ok((
                grp.map(Conversation::Group)
                    .unwrap_or(Conversation::Friend(peer)),
                n as u64,
            ))
        })?;
        let mut totals: Vec<(Conversation, u64)> = Vec::new();
        for row in rows {
            let (c, n) = row?;
            match totals.iter_mut().find(|(k, _)| *k == c) {
                Some((_, t)) => *t += n,
                None => totals.push((c, n)),
            }
        }
        Ok(totals)
    }

    /// Marks everything received in a conversation as shown.
    pub fn mark_read(&self, conversation: &Conversation) -> Result<(), ClientError> {
        let (filter, key) = conversation_filter(conversation);
        let sql = format!(
            "UPDATE messages SET shown = 1 WHERE pos IN (SELECT m.pos {UNSHOWN_ROWS}) AND {filter}"
        );
        self.conn.prepare_cached(&sql)?.execute(params![key])?;
        Self::drop_shown_spans(&self.conn)
    }

    /// The newest `limit` entries whose text contains `words`, newest first.
    pub fn search(
        &self,
        me: &str,
        words: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        let pattern = format!(
            "%{}%",
            words
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let columns = history_columns("messages.");
        let sql = format!(
            "SELECT {columns} FROM messages WHERE kind = 'text' AND body LIKE ?1 ESCAPE '\\' ORDER BY pos DESC LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![pattern, limit as i64], |r| row_to_history(r, me))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A group by name.
    pub fn group_by_name(&self, name: &str) -> Result<Option<GroupState>, ClientError> {
        // Cached: every text sent to a group looks its group up by name, and
        // parsing the statement each time cost 13.6k instructions.
        let id: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM groups WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => self.group(id as u64),
            None => Ok(None),
        }
    }

    /// A group by id, at its newest known epoch.
    pub fn group(&self, id: u64) -> Result<Option<GroupState>, ClientError> {
        let head = self
            .conn
            .prepare_cached("SELECT name, admin, epoch, member FROM groups WHERE id = ?1")?
            .query_row(params![id as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()?;
        let Some((name, admin, epoch, member)) = head else {
            return Ok(None);
        };
        let (key, roster) = match self.group_epoch(id, epoch)? {
            Some(keys) if member => (Some(keys.key.clone()), keys.roster.clone()),
            _ => (None, Vec::new()),
        };
        Ok(Some(GroupState {
            id,
            name,
            admin,
            epoch,
            member,
            roster,
            key,
        }))
    }

    /// Every group we were ever in, by name.
    pub fn groups(&self) -> Result<Vec<GroupState>, ClientError> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare("SELECT id FROM groups ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(g) = self.group(id as u64)? {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// A group's name, if we know the group.
    pub fn group_name(&self, id: u64) -> Result<Option<String>, ClientError> {
        if let Some(name) = self.group_names.borrow().get(&id) {
            return Ok(Some(name.clone()));
        }
        let name: Option<String> = self
            .conn
            .prepare_cached("SELECT name FROM groups WHERE id = ?1")?
            .query_row(params![id as i64], |r| r.get(0))
            .optional()?;
        if let Some(n) = &name {
            self.group_names.borrow_mut().insert(id, n.clone());
        }
        Ok(name)
    }

    /// The key and roster of a group at one epoch.
    pub(crate) fn group_epoch(
        &self,
        id: u64,
        epoch: u64,
    ) -> Result<Option<Arc<EpochKeys>>, ClientError> {
        if let Some(keys) = self.epochs.borrow().get(&(id, epoch)) {
            return Ok(Some(keys.clone()));
        }
        let keys = self.load_group_epoch(id, epoch)?.map(Arc::new);
        if let Some(k) = &keys {
            self.epochs.borrow_mut().insert((id, epoch), k.clone());
        }
        Ok(keys)
    }

    fn load_group_epoch(&self, id: u64, epoch: u64) -> Result<Option<EpochKeys>, ClientError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT key, roster FROM group_epochs WHERE group_id = ?1 AND epoch = ?2",
            )?
            .query_row(params![id as i64, epoch as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((key, roster)) = row else {
            return Ok(None);
        };
        let key = self.vault.open(&format!("group-key:{id}:{epoch}"), &key)?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Damaged("a stored group key is corrupt".into()))?;
        let roster: Vec<RosterEntry> = fastchat_proto::decode(&roster)
            .map_err(|_| ClientError::Damaged("a stored roster is corrupt".into()))?;
        Ok(Some(EpochKeys::new(
            ConversationKey::from_bytes(key),
            roster,
        )))
    }

    /// Records a group's new epoch with its key and roster (we are a member).
    pub fn put_group_epoch(
        &self,
        id: u64,
        name: &str,
        admin: &str,
        epoch: u64,
        key: &ConversationKey,
        roster: &[RosterEntry],
    ) -> Result<(), ClientError> {
        self.epochs.borrow_mut().remove(&(id, epoch));
        self.group_names.borrow_mut().remove(&id);
        let roster = fastchat_proto::frame::encode_body(&roster.to_vec())?;
        self.conn.execute(
            "INSERT OR REPLACE INTO groups(id, name, admin, epoch, member) VALUES (?1, ?2, ?3, ?4, 1)",
            params![id as i64, name, admin, epoch as i64],
        )?;
        self.conn.execute(
            "INSERT OR REPLACE INTO group_epochs(group_id, epoch, key, roster) VALUES (?1, ?2, ?3, ?4)",
            params![
                id as i64,
                epoch as i64,
                self.vault.seal(&format!("group-key:{id}:{epoch}"), key.as_bytes())?,
                roster
            ],
        )?;
        Ok(())
    }

    /// Records that we were removed from a group at `epoch`.
    pub fn leave_group(&self, id: u64, epoch: u64) -> Result<(), ClientError> {
        self.group_names.borrow_mut().remove(&id);
        self.conn.execute(
            "UPDATE groups SET member = 0, epoch = ?2 WHERE id = ?1",
            params![id as i64, epoch as i64],
        )?;
        Ok(())
    }

    /// Received items not yet shown by `recv`, oldest first.
    pub fn unshown(&self) -> Result<Vec<InboxItem>, ClientError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT m.id_hi, m.id_lo, m.peer, m.kind, m.body, m.sent_at, m.grp, m.member, \
               m.att_path, m.att_bytes, m.att_sha256 {UNSHOWN_ROWS} ORDER BY m.pos"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(InboxItem {
                id: id_from_key(r.get(0)?, r.get(1)?),
                from: r.get(2)?,
                kind: InboxKind::parse(&r.get::<_, String>(3)?),
                text: r.get(4)?,
                sent_at_ms: r.get::<_, i64>(5)? as u64,
                group: r.get(6)?,
                member: r.get(7)?,
                attachment: match r.get::<_, Option<String>>(8)? {
                    Some(path) => Some(Attachment {
                        path,
                        bytes: r.get::<_, i64>(9)? as u64,
                        digest: named_digest(r.get(10)?),
                    }),
                    None => None,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks items as shown so `recv` never prints them again.
    pub fn mark_shown(&mut self, ids: &[[u8; 16]]) -> Result<(), ClientError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE messages SET shown = 1 WHERE id_hi = ?1 AND id_lo = ?2")?;
            for id in ids {
                let (hi, lo) = id_key(id);
                stmt.execute(params![hi, lo])?;
            }
        }
        Self::drop_shown_spans(&tx)?;
        tx.commit()?;
        Ok(())
    }
}

/// A peer row, with its (possibly sealed) conversation key still to open.
/// An attachment's digest as stored: named by its hash since protocol
/// version 7; a bare hex digest, saved before, is a SHA-256.
fn named_digest(stored: String) -> String {
    if stored.contains(':') {
        stored
    } else {
        format!("sha256:{stored}")
    }
}

fn row_to_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Peer, Option<Vec<u8>>)> {
    let key: Option<Vec<u8>> = r.get(3)?;
    let signing_key: Option<Vec<u8>> = r.get(4)?;
    Ok((
        Peer {
            name: r.get(0)?,
            public_key: r.get(1)?,
            signing_key: signing_key.and_then(|k| <[u8; 32]>::try_from(k).ok()),
            state: PeerState::parse(&r.get::<_, String>(2)?),
            key: None,
        },
        key,
    ))
}

/// The label a transfer record is sealed under.
fn transfer_label(table: Transfers, id: &[u8; 16]) -> String {
    let kind = match table {
        Transfers::Uploads => "upload",
        Transfers::Downloads => "download",
    };
    format!("{kind}:{}", fastchat_proto::MessageId(*id).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_saved_before_it_was_named_reads_as_a_sha256() {
        assert_eq!(named_digest("ab12".into()), "sha256:ab12");
        assert_eq!(named_digest("blake3:ab12".into()), "blake3:ab12");
    }

    fn item(n: u32, from: &str, group: Option<&str>) -> InboxItem {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id[4] = group.is_some() as u8;
        InboxItem {
            id,
            from: from.into(),
            kind: InboxKind::Text,
            group: group.map(str::to_string),
            member: None,
            attachment: None,
            text: format!("message {n}"),
            sent_at_ms: n as u64,
        }
    }

    fn fresh_keystore(dir: &Path) -> Keystore {
        let profile = Profile {
            name: "alice".into(),
            server: "127.0.0.1:7700".into(),
            ca_pem: Vec::new(),
        };
        Keystore::create(
            &dir.join(crate::KEYSTORE_FILE),
            &profile,
            &Identity::generate().unwrap(),
            &SigningIdentity::generate().unwrap(),
            None,
        )
        .unwrap()
    }

    /// Batches larger than one statement carries, with ids stored before
    /// and ids repeated inside the batch: each id is new once, in order;
    /// and marks of delivery reach exactly the ids named, to that peer.
    #[test]
    fn many_rows_at_once_keep_each_id_once_and_mark_only_those_named() {
        let dir = tempfile::tempdir().unwrap();
        let ks = fresh_keystore(dir.path());
        let first: Vec<InboxItem> = (0..40).map(|n| item(n, "bob", None)).collect();
        let fresh = ks.insert_inbox(first).unwrap();
        assert_eq!(fresh.len(), 40);

        let mut again: Vec<InboxItem> = (30..70).map(|n| item(n, "bob", None)).collect();
        again.insert(5, item(50, "bob", None));
        again.push(item(69, "bob", None));
        again.push(item(3, "bob", None));
        let fresh: Vec<String> = ks
            .insert_inbox(again)
            .unwrap()
            .into_iter()
            .map(|i| i.text)
            .collect();
        // 50 goes in where it first appears, ahead of 40.
        let expected: Vec<String> = std::iter::once(50)
            .chain((40..70).filter(|n| *n != 50))
            .map(|n| format!("message {n}"))
            .collect();
        assert_eq!(fresh, expected);
        assert_eq!(ks.unshown().unwrap().len(), 70);

        let ids: Vec<[u8; 16]> = (0..45u32)
            .map(|n| {
                let mut id = [0xee; 16];
                id[..4].copy_from_slice(&n.to_be_bytes());
                id
            })
            .collect();
        let rows: Vec<SentRecord<'_>> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| SentRecord {
                id: *id,
                to: if n % 2 == 0 { "bob" } else { "carol" },
                group: None,
                text: "hello",
                sent_at_ms: n as u64,
                state: MessageState::Sent,
            })
            .collect();
        ks.record_sent(&rows).unwrap();
        let mut explain = ks
            .conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                sql_rows::shape(&POSITIONS_SQL, sql_rows::MAX_ROWS)
            ))
            .unwrap();
        let plan: Vec<String> = explain
            .raw_query()
            .mapped(|r| r.get::<_, String>(3))
            .collect::<Result<_, _>>()
            .unwrap();
        drop(explain);
        assert!(
            plan.iter()
                .any(|p| p.contains("COVERING INDEX") && p.contains("(id_hi=? AND id_lo=?)")),
            "a receipt's ids are looked up in the id index alone: {plan:?}"
        );
        // Every id told as bob's: only bob's texts among them change, and
        // ids of nothing leave nothing behind.
        ks.mark_delivered("bob", &ids[..41]).unwrap();
        ks.mark_delivered("bob", &[[0x11; 16], [0x12; 16]]).unwrap();
        let spans: (i64, i64) = ks
            .conn
            .query_row(
                "SELECT COUNT(*), SUM(last - first + 1) FROM receipt_spans",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(spans, (1, 41), "one span over the 41 positions we hold");
        // A search reads the same marks, each for its own text and friend.
        let found = ks.search("alice", "hello", 100).unwrap();
        let delivered = found
            .iter()
            .filter(|h| h.state == MessageState::Delivered)
            .count();
        assert_eq!((found.len(), delivered), (45, 21), "search");
        for (peer, sent, delivered) in [("bob", 23, 21), ("carol", 22, 0)] {
            let history = ks
                .history("alice", &Conversation::Friend(peer.into()), 100)
                .unwrap();
            let outgoing: Vec<_> = history.iter().filter(|h| h.outgoing).collect();
            assert_eq!(outgoing.len(), sent, "{peer}");
            let marked = outgoing
                .iter()
                .filter(|h| h.state == MessageState::Delivered)
                .count();
            assert_eq!(marked, delivered, "{peer}");
        }
    }

    /// The schema batch runs when the file's fingerprint differs (a new
    /// file, an older schema), and is skipped when it matches.
    #[test]
    fn the_schema_is_applied_once_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::KEYSTORE_FILE);
        let profile = Profile {
            name: "alice".into(),
            server: "127.0.0.1:7700".into(),
            ca_pem: Vec::new(),
        };
        let ks = Keystore::create(
            &path,
            &profile,
            &Identity::generate().unwrap(),
            &SigningIdentity::generate().unwrap(),
            None,
        )
        .unwrap();
        drop(ks);
        let raw = rusqlite::Connection::open(&path).unwrap();
        let version = |c: &rusqlite::Connection| -> i64 {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap()
        };
        let has_spans = |c: &rusqlite::Connection| -> bool {
            c.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'group_spans'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 1
        };
        assert_eq!(version(&raw), SCHEMA_VERSION);
        // Same fingerprint: the batch is skipped (a dropped table stays dropped).
        raw.execute_batch("DROP TABLE group_spans").unwrap();
        drop(Keystore::open(dir.path()).unwrap());
        assert!(!has_spans(&raw));
        // An older schema: the batch runs and the fingerprint is written.
        raw.pragma_update(None, "user_version", 0).unwrap();
        drop(Keystore::open(dir.path()).unwrap());
        assert!(has_spans(&raw));
        assert_eq!(version(&raw), SCHEMA_VERSION);
    }

    /// A friend's or a group's history comes out whole, in order and
    /// alone, whatever the statements mixed: several friends and groups in
    /// one batch, sent and received, batches over 32 rows, and a
    /// redelivery that stores only some of its rows.
    #[test]
    fn a_conversations_history_is_found_through_its_spans() {
        let dir = tempfile::tempdir().unwrap();
        let ks = fresh_keystore(dir.path());
        let friends = ["bob", "carol", "dave"];
        let mut expected: std::collections::HashMap<&str, Vec<String>> = Default::default();
        let mut n = 0u32;
        for batch in 0..40u32 {
            // Received: 1 to 70 items from a rotating mix of friends, with a
            // group text in every fifth place.
            let mut items = Vec::new();
            for k in 0..(1 + batch * 7 % 70) {
                n += 1;
                let from = friends[((batch + k / 3) % 3) as usize];
                if k % 5 == 4 {
                    let group = ["team", "ops"][(k / 5 % 2) as usize];
                    items.push(item(n, from, Some(group)));
                    expected
                        .entry(group)
                        .or_default()
                        .push(format!("message {n}"));
                } else {
                    items.push(item(n, from, None));
                    expected
                        .entry(from)
                        .or_default()
                        .push(format!("message {n}"));
                }
            }
            if batch % 7 == 3 {
                // Redelivered: the last batch's items again, and one new one.
                let again: Vec<InboxItem> = items.clone();
                ks.insert_inbox(items).unwrap();
                n += 1;
                let mut with_new = again;
                with_new.insert(1, item(n, "carol", None));
                expected
                    .entry("carol")
                    .or_default()
                    .push(format!("message {n}"));
                ks.insert_inbox(with_new).unwrap();
            } else {
                ks.insert_inbox(items).unwrap();
            }
            // Sent: a few to two friends and one to the group.
            let texts: Vec<(u32, &str)> = (0..(batch % 4))
                .map(|k| {
                    n += 1;
                    (n, friends[((batch + k) % 2) as usize])
                })
                .collect();
            let bodies: Vec<String> = texts.iter().map(|(n, _)| format!("sent {n}")).collect();
            let mut rows: Vec<SentRecord<'_>> = texts
                .iter()
                .zip(&bodies)
                .map(|((n, to), body)| {
                    let mut id = [0x55; 16];
                    id[..4].copy_from_slice(&n.to_be_bytes());
                    SentRecord {
                        id,
                        to,
                        group: None,
                        text: body,
                        sent_at_ms: *n as u64,
                        state: MessageState::Sent,
                    }
                })
                .collect();
            for ((_, to), body) in texts.iter().zip(&bodies) {
                expected.entry(to).or_default().push(body.clone());
            }
            let to_group = format!("to the group {batch}");
            rows.push(SentRecord {
                id: [0x66; 16].map(|b| b ^ batch as u8),
                to: "team",
                group: Some("team"),
                text: &to_group,
                sent_at_ms: 0,
                state: MessageState::Sent,
            });
            expected.entry("team").or_default().push(to_group.clone());
            ks.record_sent(&rows).unwrap();
        }
        let conversations = friends
            .iter()
            .map(|f| Conversation::Friend(f.to_string()))
            .chain(["team", "ops"].map(|g| Conversation::Group(g.into())));
        for conversation in conversations {
            let (Conversation::Friend(name) | Conversation::Group(name)) = &conversation;
            let all = &expected[name.as_str()];
            for limit in [1, 7, 50, 10_000] {
                let page: Vec<String> = ks
                    .history("alice", &conversation, limit)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.text)
                    .collect();
                let want = &all[all.len().saturating_sub(limit)..];
                assert_eq!(page, want, "{name}, the newest {limit}");
            }
        }
    }

    /// A keystore from before spans (an index over every direct row, or
    /// over every group row, under either name it had) is migrated on
    /// open: every old row is in its conversation's history, new rows
    /// follow, and the old index is gone.
    #[test]
    fn a_keystore_indexed_by_conversation_gets_spans_on_open() {
        let group_index = |name: &str| {
            format!(
                "DROP TABLE group_spans; \
                 CREATE INDEX {name} ON messages(grp, pos) WHERE grp IS NOT NULL;"
            )
        };
        for (older, index) in [
            (
                "DELETE FROM peer_spans; CREATE INDEX messages_by_peer ON messages(peer, pos);"
                    .to_string(),
                "messages_by_peer",
            ),
            (group_index("messages_in_groups"), "messages_in_groups"),
            (group_index("messages_by_group"), "messages_by_group"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let ks = fresh_keystore(dir.path());
            let group = |n: u32| (n % 4 == 3).then_some("team");
            ks.insert_inbox(
                (0..40)
                    .map(|n| item(n, ["bob", "carol"][n as usize % 2], group(n)))
                    .collect(),
            )
            .unwrap();
            drop(ks);
            let raw = rusqlite::Connection::open(dir.path().join(crate::KEYSTORE_FILE)).unwrap();
            // As the older schema left it.
            raw.execute_batch(&format!("{older} PRAGMA user_version = 0;"))
                .unwrap();
            let ks = Keystore::open(dir.path()).unwrap();
            ks.insert_inbox(vec![item(40, "bob", None), item(43, "carol", Some("team"))])
                .unwrap();
            let texts = |c: Conversation| -> Vec<String> {
                ks.history("alice", &c, 100)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.text)
                    .collect()
            };
            let want = |ns: Vec<u32>| -> Vec<String> {
                ns.into_iter().map(|n| format!("message {n}")).collect()
            };
            let bob = (0..=40).step_by(2).filter(|n| group(*n).is_none());
            assert_eq!(
                texts(Conversation::Friend("bob".into())),
                want(bob.collect()),
                "{index}"
            );
            let team = (0..=43).filter(|n| group(*n).is_some());
            assert_eq!(
                texts(Conversation::Group("team".into())),
                want(team.collect()),
                "{index}"
            );
            let left: i64 = raw
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = ?1",
                    [index],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(left, 0, "the old index {index} was dropped");
        }
    }

    /// Unread counts, a conversation read, `recv`'s list and its marks all
    /// go through the spans of unshown rows, which leave once all their
    /// rows were shown; our own texts between them are never unread.
    #[test]
    fn unshown_rows_are_found_through_their_spans_until_shown() {
        let dir = tempfile::tempdir().unwrap();
        let mut ks = fresh_keystore(dir.path());
        ks.insert_inbox(vec![item(1, "bob", None), item(2, "carol", None)])
            .unwrap();
        ks.record_sent(&[SentRecord {
            id: [7; 16],
            to: "bob",
            group: None,
            text: "mine",
            sent_at_ms: 3,
            state: MessageState::Sent,
        }])
        .unwrap();
        ks.insert_inbox(vec![item(4, "bob", Some("team")), item(5, "bob", None)])
            .unwrap();
        let spans = |ks: &Keystore| -> i64 {
            ks.conn
                .query_row("SELECT COUNT(*) FROM unshown_spans", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(spans(&ks), 2);
        let mut unread = ks.unread_counts().unwrap();
        unread.sort_by_key(|(c, n)| (*n, format!("{c:?}")));
        assert_eq!(
            unread,
            [
                (Conversation::Friend("carol".into()), 1),
                (Conversation::Group("team".into()), 1),
                (Conversation::Friend("bob".into()), 2),
            ]
        );
        ks.mark_read(&Conversation::Friend("bob".into())).unwrap();
        let ids = |items: Vec<InboxItem>| items.iter().map(|i| i.id).collect::<Vec<_>>();
        let left = ids(ks.unshown().unwrap());
        assert_eq!(
            left,
            [item(2, "carol", None).id, item(4, "bob", Some("team")).id]
        );
        assert_eq!(spans(&ks), 2, "each span still holds an unshown row");
        ks.mark_shown(&[item(4, "bob", Some("team")).id]).unwrap();
        assert_eq!(spans(&ks), 1, "the second span was all shown");
        ks.mark_read(&Conversation::Friend("carol".into())).unwrap();
        assert!(ks.unshown().unwrap().is_empty());
        assert!(ks.unread_counts().unwrap().is_empty());
        assert_eq!(spans(&ks), 0);
        // A redelivery stores nothing and notes no span.
        ks.insert_inbox(vec![item(5, "bob", None)]).unwrap();
        assert_eq!(spans(&ks), 0);

        let plan = |sql: &str, key: &str| -> String {
            let mut stmt = ks
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let keys = &[key][..stmt.parameter_count()];
            let rows = stmt.query_map(rusqlite::params_from_iter(keys), |r| r.get::<_, String>(3));
            rows.unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ")
        };
        let select = plan(&format!("SELECT m.pos {UNSHOWN_ROWS}"), "");
        assert_eq!(
            select, "SCAN s; SEARCH m USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
            "reads the spans' rows only"
        );
        let prune = plan(DROP_SHOWN_SPANS, "");
        assert!(
            !prune.contains("SCAN m") && !prune.contains("AUTOMATIC"),
            "{prune}"
        );
        for conversation in [
            Conversation::Friend("bob".into()),
            Conversation::Group("team".into()),
        ] {
            let (filter, key) = conversation_filter(&conversation);
            let update = plan(
                &format!(
                    "UPDATE messages SET shown = 1 WHERE pos IN (SELECT m.pos {UNSHOWN_ROWS}) AND {filter}"
                ),
                key,
            );
            assert!(
                !update.contains("SCAN m") && !update.contains("AUTOMATIC"),
                "{update}"
            );
        }
    }

    /// Turns `raw`'s history back into the shape that keyed each message by
    /// its id as a 16-byte blob, every row at its position.
    fn back_to_blob_ids(raw: &rusqlite::Connection) {
        raw.execute_batch(
            "ALTER TABLE messages RENAME TO messages_by_ints; \
             DROP TABLE group_spans; DROP TABLE unshown_spans; \
             CREATE TABLE messages(pos INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, \
               peer TEXT NOT NULL, outgoing INTEGER NOT NULL, kind TEXT NOT NULL, grp TEXT, \
               member TEXT, att_path TEXT, att_bytes INTEGER, att_sha256 TEXT, body TEXT NOT NULL, \
               sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL, state TEXT NOT NULL, \
               shown INTEGER NOT NULL DEFAULT 0); \
             CREATE INDEX messages_in_groups ON messages(grp, pos) WHERE grp IS NOT NULL; \
             CREATE INDEX messages_unshown ON messages(pos) WHERE shown = 0 AND outgoing = 0;",
        )
        .unwrap();
        let keys: Vec<(i64, i64, i64)> = raw
            .prepare("SELECT pos, id_hi, id_lo FROM messages_by_ints")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (pos, hi, lo) in keys {
            raw.execute(
                "INSERT INTO messages SELECT pos, ?2, peer, outgoing, kind, grp, member, att_path, \
                   att_bytes, att_sha256, body, sent_at, received_at, state, shown \
                 FROM messages_by_ints WHERE pos = ?1",
                params![pos, &id_from_key(hi, lo)[..]],
            )
            .unwrap();
        }
        raw.execute_batch("DROP TABLE messages_by_ints;").unwrap();
    }

    /// A keystore with texts to bob and carol and one received from bob,
    /// opened again after its history went back to blob ids and `older`
    /// turned its marks into an older schema's.
    fn keystore_with_older_marks(
        older: &str,
    ) -> (tempfile::TempDir, Keystore, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let ks = fresh_keystore(dir.path());
        let sent = |n: u8, to: &'static str| SentRecord {
            id: [n; 16],
            to,
            group: None,
            text: "hello",
            sent_at_ms: u64::from(n),
            state: MessageState::Sent,
        };
        ks.record_sent(&[sent(1, "bob"), sent(2, "bob"), sent(3, "carol")])
            .unwrap();
        ks.insert_inbox(vec![item(9, "bob", None)]).unwrap();
        drop(ks);
        let raw = rusqlite::Connection::open(dir.path().join(crate::KEYSTORE_FILE)).unwrap();
        back_to_blob_ids(&raw);
        raw.execute_batch(&format!(
            "DROP TABLE receipt_spans; {older} PRAGMA user_version = 0;"
        ))
        .unwrap();
        let ks = Keystore::open(dir.path()).unwrap();
        (dir, ks, raw)
    }

    /// Each of bob's and carol's texts' states, and whether the older
    /// `table` is gone, with how many marks there are now.
    fn marks_after_migration(
        ks: &Keystore,
        raw: &rusqlite::Connection,
        table: &str,
    ) -> (Vec<MessageState>, Vec<MessageState>, (i64, i64)) {
        let states = |peer: &str| -> Vec<MessageState> {
            ks.history("alice", &Conversation::Friend(peer.into()), 10)
                .unwrap()
                .into_iter()
                .filter(|e| e.outgoing)
                .map(|e| e.state)
                .collect()
        };
        let left = raw
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name = ?1), \
                        (SELECT COUNT(*) FROM receipt_spans)",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        (states("bob"), states("carol"), left)
    }

    /// A keystore whose history was keyed by blob ids keeps every message,
    /// with its id, position and state, and the integer key does what the
    /// blob did: a stored id is not new again, a receipt finds its text.
    #[test]
    fn a_keystores_blob_ids_become_integer_keys_and_keep_each_message() {
        let (_dir, mut ks, raw) = keystore_with_older_marks("");
        let bob = ks
            .history("alice", &Conversation::Friend("bob".into()), 10)
            .unwrap();
        let ids: Vec<[u8; 16]> = bob.iter().map(|e| e.id).collect();
        assert_eq!(ids, [[1; 16], [2; 16], item(9, "bob", None).id]);
        let unshown: Vec<[u8; 16]> = ks.unshown().unwrap().iter().map(|i| i.id).collect();
        assert_eq!(unshown, [item(9, "bob", None).id]);
        assert!(
            ks.insert_inbox(vec![item(9, "bob", None), item(10, "bob", None)])
                .unwrap()
                .iter()
                .map(|i| i.id)
                .eq([item(10, "bob", None).id]),
            "a stored id is not new again"
        );
        ks.mark_delivered("bob", &[[2; 16]]).unwrap();
        let states: Vec<MessageState> = ks
            .history("alice", &Conversation::Friend("bob".into()), 10)
            .unwrap()
            .iter()
            .filter(|e| e.outgoing)
            .map(|e| e.state)
            .collect();
        assert_eq!(states, [MessageState::Sent, MessageState::Delivered]);
        ks.mark_shown(&[item(9, "bob", None).id]).unwrap();
        assert_eq!(ks.unshown().unwrap().len(), 1, "only the new one");
        let (blob_column, old_table): (i64, i64) = raw
            .query_row(
                "SELECT (SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'id'), \
                        (SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages_by_blob')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((blob_column, old_table), (0, 0));
    }

    /// A keystore from before marks named their friend keeps its marks:
    /// each becomes a span with the friend its text went to, and the old
    /// table goes.
    #[test]
    fn a_keystores_unnamed_marks_keep_their_texts_delivered() {
        // As the older schema left it: bob's second text and carol's marked,
        // and an id of nothing.
        let (_dir, ks, raw) = keystore_with_older_marks(
            "CREATE TABLE delivered_marks(id BLOB PRIMARY KEY) WITHOUT ROWID; \
             INSERT INTO delivered_marks(id) VALUES (zeroblob(16)), (x'02020202020202020202020202020202'), \
               (x'03030303030303030303030303030303');",
        );
        let (bob, carol, left) = marks_after_migration(&ks, &raw, "delivered_marks");
        // Oldest first: the second text is the marked one.
        assert_eq!(bob, [MessageState::Sent, MessageState::Delivered]);
        assert_eq!(carol, [MessageState::Delivered]);
        assert_eq!(left, (0, 2), "the old table's marks of texts we hold moved");
    }

    /// A keystore from when marks were keyed by their text's id
    /// (`delivered_to`), or were a row per position (`receipt_marks`),
    /// keeps them at each text's position, still only for the friend named.
    #[test]
    fn a_keystores_named_marks_keep_their_texts_delivered() {
        // bob's second text marked by bob, carol's by bob (no change for
        // her), and (by id) an id of nothing.
        for (table, older) in [
            (
                "delivered_to",
                "CREATE TABLE delivered_to(id BLOB NOT NULL, peer TEXT NOT NULL, PRIMARY KEY(id, peer)) WITHOUT ROWID; \
                 INSERT INTO delivered_to(id, peer) VALUES (zeroblob(16), 'bob'), \
                   (x'02020202020202020202020202020202', 'bob'), (x'03030303030303030303030303030303', 'bob');",
            ),
            (
                "receipt_marks",
                "CREATE TABLE receipt_marks(pos INTEGER NOT NULL, peer TEXT NOT NULL, PRIMARY KEY(pos, peer)) WITHOUT ROWID; \
                 INSERT INTO receipt_marks(pos, peer) VALUES (2, 'bob'), (3, 'bob');",
            ),
        ] {
            let (_dir, ks, raw) = keystore_with_older_marks(older);
            let (bob, carol, left) = marks_after_migration(&ks, &raw, table);
            // Oldest first: the second text is the marked one.
            assert_eq!(
                bob,
                [MessageState::Sent, MessageState::Delivered],
                "{table}"
            );
            assert_eq!(carol, [MessageState::Sent], "{table}");
            assert_eq!(left, (0, 2), "{table}: the marks of texts we hold moved");
        }
    }

    /// Receipts arriving in any order, repeated or overlapping, leave one
    /// friend's spans apart and merged where they touch, and mark exactly
    /// the texts they named.
    #[test]
    fn receipt_spans_merge_and_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let ks = fresh_keystore(dir.path());
        let id = |n: u8| [n; 16];
        let rows: Vec<SentRecord<'_>> = (1..=12u8)
            .map(|n| SentRecord {
                id: id(n),
                to: if n == 11 { "carol" } else { "bob" },
                group: None,
                text: "hello",
                sent_at_ms: u64::from(n),
                state: MessageState::Sent,
            })
            .collect();
        ks.record_sent(&rows).unwrap();
        let spans = || -> Vec<(String, i64, i64)> {
            ks.conn
                .prepare("SELECT peer, first, last FROM receipt_spans ORDER BY peer, last")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let delivered = || -> Vec<u8> {
            let mut d: Vec<u8> = ks
                .history("alice", &Conversation::Friend("bob".into()), 100)
                .unwrap()
                .iter()
                .filter(|h| h.state == MessageState::Delivered)
                .map(|h| h.id[0])
                .collect();
            d.sort_unstable();
            d
        };
        let bob = |first: i64, last: i64| ("bob".to_string(), first, last);
        ks.mark_delivered("bob", &[id(4), id(3)]).unwrap();
        ks.mark_delivered("bob", &[id(7)]).unwrap();
        assert_eq!(spans(), [bob(3, 4), bob(7, 7)]);
        ks.mark_delivered("bob", &[id(6), id(5)]).unwrap();
        assert_eq!(spans(), [bob(3, 7)], "touching on both sides");
        ks.mark_delivered("bob", &[id(1), id(9), id(12)]).unwrap();
        assert_eq!(spans(), [bob(1, 1), bob(3, 7), bob(9, 9), bob(12, 12)]);
        ks.mark_delivered("bob", &[id(4), id(5)]).unwrap();
        assert_eq!(
            spans(),
            [bob(1, 1), bob(3, 7), bob(9, 9), bob(12, 12)],
            "repeated"
        );
        assert_eq!(delivered(), [1, 3, 4, 5, 6, 7, 9, 12]);
        // Carol's text at 11 is inside bob's span now, and stays sent.
        ks.mark_delivered("bob", &[id(2), id(8), id(10), id(11)])
            .unwrap();
        assert_eq!(spans(), [bob(1, 12)]);
        assert_eq!(
            delivered(),
            (1..=12).filter(|n| *n != 11).collect::<Vec<u8>>()
        );
        let carol = ks
            .history("alice", &Conversation::Friend("carol".into()), 10)
            .unwrap();
        assert_eq!(carol[0].state, MessageState::Sent);
    }

    /// A chat opens on the newest page of a conversation and the unread
    /// counts; with 100,000 messages stored both must come from indexes,
    /// not a scan of the history (the plan is checked, and the time printed).
    #[test]
    fn a_hundred_thousand_messages_open_from_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile {
            name: "alice".into(),
            server: "127.0.0.1:7700".into(),
            ca_pem: Vec::new(),
        };
        let identity = Identity::generate().unwrap();
        let signing = SigningIdentity::generate().unwrap();
        let ks = Keystore::create(
            &dir.path().join("keystore.db"),
            &profile,
            &identity,
            &signing,
            None,
        )
        .unwrap();
        ks.begin().unwrap();
        let mut batch = Vec::new();
        for n in 0..100_000u32 {
            let (from, group) = match n % 4 {
                0 => ("bob", None),
                1 => ("carol", None),
                2 => ("bob", Some("team")),
                _ => ("dave", None),
            };
            batch.push(item(n, from, group));
            if batch.len() == 10_000 {
                ks.insert_inbox(std::mem::take(&mut batch)).unwrap();
            }
        }
        ks.commit().unwrap();

        let started = std::time::Instant::now();
        let page = ks
            .history("alice", &Conversation::Friend("bob".into()), 300)
            .unwrap();
        let unread = ks.unread_counts().unwrap();
        eprintln!(
            "newest page of 300 and unread counts over 100k messages: {:?}",
            started.elapsed()
        );
        assert_eq!(page.len(), 300);
        assert_eq!(page.last().unwrap().text, "message 99996");
        assert!(page.windows(2).all(|w| w[0].sent_at_ms < w[1].sent_at_ms));
        assert_eq!(unread.len(), 4);

        for (sql, key, index) in [
            (&*FRIEND_HISTORY_SQL, "bob", "PRIMARY KEY (peer=?)"),
            (&*GROUP_HISTORY_SQL, "team", "PRIMARY KEY (grp=?)"),
        ] {
            let plan: Vec<String> = ks
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params![key, 300], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{plan}");
            assert!(
                !plan.contains("TEMP B-TREE"),
                "sorts the whole history: {plan}"
            );
            // A sent text's receipt is one seek into its friend's spans.
            assert!(
                plan.contains("SEARCH d USING PRIMARY KEY (peer=? AND last>?)"),
                "{plan}"
            );
        }
    }
}
