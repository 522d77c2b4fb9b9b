//! The PostgreSQL-backed [`Store`]: the same contract as [`crate::SledStore`], shared by every
//! process that opens the same database (the replicas of an active-active global).
//!
//! In: a `postgres://` URL and [`PgOptions`]. Out: a [`PgStore`].
//!
//! - **Tables** (created and migrated at open, versions in `strait_schema`, under an advisory
//!   lock so that replicas starting together migrate once): `strait_objects` (key columns in
//!   the "C" collation, so lists sort by bytes as sled's keys do; the object as JSON text, so it
//!   reads back exactly as written), `strait_events` (revision → event JSON) and
//!   `strait_revision` (one row: the current revision).
//! - **Writes**: one transaction per batch that first locks the revision row, so writers on
//!   every replica are serialised and revisions commit in order, without gaps; the rules of a
//!   write are [`crate::apply`]'s, as for sled. The transaction ends with `pg_notify`, so
//!   every replica's watchers wake at commit.
//! - **Watches** read the event table from their revision (a page at a time), then wait for a
//!   notification, or at most [`POLL`]: a notification that is lost (a connection dropped)
//!   delays an event, never loses it. Events older than the retention are removed by the
//!   writer that passes the threshold, inside its transaction (so by one replica at a time).
//! - [`Store::revision`] is this process's latest knowledge (its own commits and the
//!   notifications it received), never ahead of the database, which is what a mirror needs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::apply::{event_for, plan};
use crate::error::StoreError;
use crate::key::Key;
use crate::object::{Event, EventKind, Object, Op, Outcome};
use crate::pg_tls::{self, Target};
use crate::store::{Stats, Store, WatchStream};

/// The longest a watcher waits for a notification before it looks at the table anyway.
pub const POLL: Duration = Duration::from_secs(1);
/// Events a watcher reads at a time.
const PAGE: i64 = 512;
/// The channel commits are announced on.
const CHANNEL: &str = "strait_events";
/// The advisory lock migrations run under (any constant; "strait" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_7261_6974;

/// The schema, one migration per version; applied in order, each once.
const MIGRATIONS: &[&str] = &[
    // 1: objects, events, the revision counter.
    "CREATE TABLE strait_objects (
         kind text COLLATE \"C\" NOT NULL,
         mesh text COLLATE \"C\" NOT NULL,
         name text COLLATE \"C\" NOT NULL,
         version bigint NOT NULL,
         object text NOT NULL,
         PRIMARY KEY (kind, mesh, name));
     CREATE INDEX strait_objects_by_mesh ON strait_objects (mesh, kind, name);
     CREATE TABLE strait_events (revision bigint PRIMARY KEY, event text NOT NULL);
     CREATE TABLE strait_revision (id int PRIMARY KEY CHECK (id = 1), revision bigint NOT NULL);
     INSERT INTO strait_revision VALUES (1, 0);",
];

/// Options of a [`PgStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// How many of the latest events to keep for watchers (at least 1; default 100 000).
    pub event_retention: u64,
    /// Kinds whose events carry `null` data (private keys), as for sled.
    pub unlogged_kinds: Vec<String>,
    /// Connections kept open for reads and writes (default 4); a watch has none of its own.
    pub connections: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { event_retention: 100_000, unlogged_kinds: Vec::new(), connections: 4 }
    }
}

/// The PostgreSQL-backed [`Store`]; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL without its password, for messages.
    shown: String,
    target: Arc<Target>,
    pool: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    revision: Arc<AtomicU64>,
    /// Bumped at each notification (and each own commit): watchers wait on it.
    wake: tokio::sync::watch::Sender<u64>,
    retention: u64,
    unlogged: HashSet<String>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn pg(context: impl std::fmt::Display) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        // The server's own message (a constraint, a permission) says more than the driver's.
        let detail = e
            .as_db_error()
            .map_or_else(|| strait_runtime::telemetry::error_chain(&e), |db| format!("{}: {}", db.code().code(), db.message()));
        let message = format!("{context}: {detail}");
        if unreachable(&e) {
            StoreError::Unavailable(message)
        } else {
            StoreError::Backend(message)
        }
    }
}

/// Whether `e` says the server cannot be reached (down, restarting, connection lost) rather
/// than that the request was wrong: connection exceptions (class 08), shutdowns (57P), and
/// connections closed or refused.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => {
            e.is_closed()
                || std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    // A certificate that does not verify is a setting to fix, not an outage.
                    .is_some_and(|io| io.get_ref().is_none_or(|inner| !inner.is::<rustls::Error>()))
        }
    }
}

/// Opens a connection named `application_name` (as `pg_stat_activity` shows), encrypted as
/// the URL's `sslmode` says.
async fn open_connection(
    target: &Target,
    application_name: &str,
) -> Result<(Client, tokio_postgres::Connection<tokio_postgres::Socket, pg_tls::Stream<tokio_postgres::Socket>>), tokio_postgres::Error> {
    let mut config = target.config.clone();
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    config.connect(target.tls.clone()).await
}

async fn connect(target: &Target, shown: &str) -> Result<Client, StoreError> {
    let (client, connection) =
        open_connection(target, "strait-store").await.map_err(pg(format_args!("connecting to PostgreSQL at {shown}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "a PostgreSQL connection of the store ended");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages (the `user:password@` of the URL form, the
/// `password=` of the key-value form, and a `password` query parameter).
pub fn redact(url: &str) -> String {
    let hide_parameter = |text: &str, separator: char| -> String {
        text.split(separator)
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.trim() == "password" => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join(&separator.to_string())
    };
    let Some(scheme) = url.find("://") else { return hide_parameter(url, ' ') };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(hide_parameter(query, '&'))),
        None => (url, None),
    };
    let base = match base.rfind('@') {
        Some(at) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &base[..scheme + 3], &base[at..])
        }
        _ => base.to_string(),
    };
    match query {
        Some(query) => format!("{base}?{query}"),
        None => base,
    }
}

impl PgStore {
    /// Connects, applies the migrations this database lacks, and starts listening for commits.
    /// The URL is libpq's (`postgres://user:password@host:port/db` or `host=... dbname=...`),
    /// with libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`: see
    /// [`crate::pg_tls`]).
    pub async fn open(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let target = Arc::new(pg_tls::target(url)?);
        let shown = redact(url);
        let mut client = connect(&target, &shown).await?;
        migrate(&mut client).await?;
        let revision = current_revision(&client).await?;
        let mut pool = vec![Mutex::new(Some(client))];
        for _ in 1..options.connections.max(1) {
            pool.push(Mutex::new(Some(connect(&target, &shown).await?)));
        }
        let revision = Arc::new(AtomicU64::new(revision));
        let (wake, _) = tokio::sync::watch::channel(0);
        let listener = tokio::spawn(listen(target.clone(), revision.clone(), wake.clone()));
        tracing::info!(url = %shown, tls = ?target.config.get_ssl_mode(), revision = revision.load(Ordering::Acquire), "store opened (PostgreSQL)");
        let inner = Inner {
            shown,
            target,
            pool,
            next: AtomicUsize::new(0),
            revision,
            wake,
            retention: options.event_retention.max(1),
            unlogged: options.unlogged_kinds.into_iter().collect(),
            listener,
        };
        Ok(PgStore { inner: Arc::new(inner) })
    }

    /// Runs `f` with a connection of the pool (reconnecting one that closed): the first one
    /// free, else the next in turn (a read never queues behind a busy one while another idles).
    async fn with_client<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pool = &self.inner.pool;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..pool.len()).find_map(|i| pool[(start + i) % pool.len()].try_lock().ok());
        let mut guard = match free {
            Some(guard) => guard,
            None => pool[start % pool.len()].lock().await,
        };
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect(&self.inner.target, &self.inner.shown).await?);
        }
        let client = guard.as_mut().expect("connected above");
        f(client).await
    }
}

async fn current_revision(client: &Client) -> Result<u64, StoreError> {
    let row = client.query_one("SELECT revision FROM strait_revision WHERE id = 1", &[]).await.map_err(pg("reading the revision"))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Applies the migrations the database lacks, one transaction under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg("taking the migration lock"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS strait_schema (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(pg("creating strait_schema"))?;
    let row = tx.query_one("SELECT coalesce(max(version), 0) FROM strait_schema", &[]).await.map_err(pg("reading the schema version"))?;
    let have = row.get::<_, i32>(0) as usize;
    if have > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database's schema is at version {have}, newer than this binary knows ({}): run the newer version",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(have) {
        let version = index as i32 + 1;
        tx.batch_execute(sql).await.map_err(pg(format_args!("applying schema migration {version}")))?;
        tx.execute("INSERT INTO strait_schema (version) VALUES ($1)", &[&version]).await.map_err(pg("recording a migration"))?;
        tracing::info!(version, "applied a schema migration to the store's database");
    }
    tx.commit().await.map_err(pg("committing the migrations"))
}

/// Listens for commits on a connection of its own, reconnecting with back-off; each
/// notification carries the committed revision.
async fn listen(target: Arc<Target>, revision: Arc<AtomicU64>, wake: tokio::sync::watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match open_connection(&target, "strait-store-listen").await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                    // Whatever committed before LISTEN took effect.
                    let latest = current_revision(&client).await.unwrap_or(0);
                    revision.fetch_max(latest, Ordering::AcqRel);
                    wake.send_modify(|n| *n += 1);
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The connection must be polled for the LISTEN to complete.
                let mut listening = std::pin::pin!(listening);
                let ready = loop {
                    tokio::select! {
                        done = &mut listening => break done.is_ok(),
                        message = messages.next() => if message.is_none() { break false },
                    }
                };
                if ready {
                    backoff = Duration::from_millis(100);
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if let Ok(committed) = n.payload().parse::<u64>() {
                                    revision.fetch_max(committed, Ordering::AcqRel);
                                }
                                wake.send_modify(|n| *n += 1);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
                tracing::warn!("the store's PostgreSQL notification connection ended; watchers poll until it is back");
            }
            Err(error) => tracing::warn!(%error, "cannot listen for the store's commits; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn object_from(text: &str, what: &Key) -> Result<Object, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("decoding object {what}: {e}")))
}

fn key_of(row: &tokio_postgres::Row) -> Key {
    Key::new(row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2))
}

fn check_key(key: &Key) -> Result<(), StoreError> {
    // The same refusal as sled's key encoding: PostgreSQL text cannot hold NUL either.
    key.to_bytes().map(drop)
}

fn objects(rows: Vec<tokio_postgres::Row>) -> Result<Vec<Object>, StoreError> {
    rows.iter().map(|row| object_from(row.get(3), &key_of(row))).collect()
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        check_key(key)?;
        self.with_client(async |c| {
            let row = c
                .query_opt(
                    "SELECT object FROM strait_objects WHERE kind = $1 AND mesh = $2 AND name = $3",
                    &[&key.kind, &key.mesh, &key.name],
                )
                .await
                .map_err(pg(format_args!("reading {key}")))?;
            row.map(|r| object_from(r.get(0), key)).transpose()
        })
        .await
    }

    async fn list(&self, kind: &str, mesh: Option<&str>) -> Result<Vec<Object>, StoreError> {
        crate::key::prefix(kind, mesh)?;
        self.with_client(async |c| {
            let rows = match mesh {
                Some(mesh) => {
                    c.query(
                        "SELECT kind, mesh, name, object FROM strait_objects WHERE kind = $1 AND mesh = $2 ORDER BY mesh, name",
                        &[&kind, &mesh],
                    )
                    .await
                }
                None => c.query("SELECT kind, mesh, name, object FROM strait_objects WHERE kind = $1 ORDER BY mesh, name", &[&kind]).await,
            }
            .map_err(pg(format_args!("listing {kind}")))?;
            objects(rows)
        })
        .await
    }

    async fn list_mesh(&self, mesh: &str) -> Result<Vec<Object>, StoreError> {
        self.with_client(async |c| {
            let rows = c
                .query("SELECT kind, mesh, name, object FROM strait_objects WHERE mesh = $1 ORDER BY kind, name", &[&mesh])
                .await
                .map_err(pg(format_args!("listing mesh {mesh}")))?;
            objects(rows)
        })
        .await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        for op in &ops {
            check_key(op.key())?;
        }
        let (retention, unlogged) = (self.inner.retention, &self.inner.unlogged);
        let (outcomes, last) = self
            .with_client(async |c| {
                let tx = c.transaction().await.map_err(pg("starting a batch"))?;
                // Every writer, on every replica, queues here: revisions commit in order.
                let row = tx
                    .query_one("SELECT revision FROM strait_revision WHERE id = 1 FOR UPDATE", &[])
                    .await
                    .map_err(pg("locking the revision"))?;
                let mut revision = row.get::<_, i64>(0) as u64;
                // Taken under the lock, so modification times follow revision order.
                let now = OffsetDateTime::now_utc();
                let mut staged: HashMap<Key, Option<Object>> = HashMap::new();
                let mut outcomes = Vec::with_capacity(ops.len());
                let mut events = Vec::new();
                for op in &ops {
                    let key = op.key();
                    let current = match staged.get(key) {
                        Some(seen) => seen.clone(),
                        None => tx
                            .query_opt(
                                "SELECT object FROM strait_objects WHERE kind = $1 AND mesh = $2 AND name = $3",
                                &[&key.kind, &key.mesh, &key.name],
                            )
                            .await
                            .map_err(pg(format_args!("reading {key}")))?
                            .map(|r| object_from(r.get(0), key))
                            .transpose()?,
                    };
                    let outcome = plan(op, current, revision + 1, now)?;
                    if let Some(mut event) = event_for(&outcome, revision + 1) {
                        revision += 1;
                        staged.insert(key.clone(), (event.kind == EventKind::Put).then(|| event.object.clone()));
                        if unlogged.contains(&key.kind) {
                            event.object.data = serde_json::Value::Null;
                        }
                        events.push(event);
                    }
                    outcomes.push(outcome);
                }
                if events.is_empty() {
                    tx.rollback().await.map_err(pg("ending a batch that changed nothing"))?;
                    return Ok((outcomes, None));
                }
                for (key, object) in &staged {
                    match object {
                        Some(object) => {
                            let text = serde_json::to_string(object).map_err(|e| StoreError::Backend(format!("encoding {key}: {e}")))?;
                            tx.execute(
                                "INSERT INTO strait_objects (kind, mesh, name, version, object) VALUES ($1, $2, $3, $4, $5)
                                 ON CONFLICT (kind, mesh, name) DO UPDATE SET version = EXCLUDED.version, object = EXCLUDED.object",
                                &[&key.kind, &key.mesh, &key.name, &(object.version as i64), &text],
                            )
                            .await
                            .map_err(pg(format_args!("writing {key}")))?;
                        }
                        None => {
                            tx.execute(
                                "DELETE FROM strait_objects WHERE kind = $1 AND mesh = $2 AND name = $3",
                                &[&key.kind, &key.mesh, &key.name],
                            )
                            .await
                            .map_err(pg(format_args!("deleting {key}")))?;
                        }
                    }
                }
                for event in &events {
                    let text =
                        serde_json::to_string(event).map_err(|e| StoreError::Backend(format!("encoding event {}: {e}", event.revision)))?;
                    tx.execute("INSERT INTO strait_events (revision, event) VALUES ($1, $2)", &[&(event.revision as i64), &text])
                        .await
                        .map_err(pg("logging an event"))?;
                }
                tx.execute("UPDATE strait_revision SET revision = $1 WHERE id = 1", &[&(revision as i64)])
                    .await
                    .map_err(pg("moving the revision"))?;
                // Compaction: the writer that crosses the retention removes what fell out of it.
                if revision > retention {
                    let keep_from = revision - retention + 1;
                    tx.execute("DELETE FROM strait_events WHERE revision < $1", &[&(keep_from as i64)])
                        .await
                        .map_err(pg("trimming the event log"))?;
                }
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()]).await.map_err(pg("announcing the batch"))?;
                tx.commit().await.map_err(pg("committing a batch"))?;
                Ok((outcomes, Some(revision)))
            })
            .await?;
        if let Some(last) = last {
            self.inner.revision.fetch_max(last, Ordering::AcqRel);
            self.inner.wake.send_modify(|n| *n += 1);
        }
        Ok(outcomes)
    }

    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    async fn watch(&self, from_revision: u64) -> Result<WatchStream, StoreError> {
        let wake = self.inner.wake.subscribe();
        let inner = Arc::downgrade(&self.inner);
        let mut state = PgWatch { inner, next: from_revision.saturating_add(1), buffer: VecDeque::new(), wake, failed: false };
        // A compacted start fails the call itself, as sled's does.
        state.fill().await?;
        Ok(Box::pin(futures::stream::unfold(state, PgWatch::next_item)))
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.with_client(async |c| {
            let mut objects_by_kind = BTreeMap::new();
            for row in c.query("SELECT kind, count(*) FROM strait_objects GROUP BY kind", &[]).await.map_err(pg("counting objects"))? {
                objects_by_kind.insert(row.get::<_, String>(0), row.get::<_, i64>(1) as u64);
            }
            let size = c
                .query_one(
                    "SELECT (pg_total_relation_size('strait_objects') + pg_total_relation_size('strait_events') \
                     + pg_total_relation_size('strait_revision'))::bigint",
                    &[],
                )
                .await
                .map_err(pg("measuring the tables"))?;
            let revision = current_revision(c).await?;
            self.inner.revision.fetch_max(revision, Ordering::AcqRel);
            Ok(Stats { objects_by_kind, size_on_disk: size.get::<_, i64>(0) as u64, revision, corrupt_skipped: 0 })
        })
        .await
    }

    async fn try_lock(&self, name: &str) -> Result<Option<crate::Lease>, StoreError> {
        // A session-level advisory lock on a connection of its own: it lasts while the
        // connection does, and the server releases it when the connection (or this process) dies.
        let (client, connection) = open_connection(&self.inner.target, "strait-store-lock")
            .await
            .map_err(pg(format_args!("connecting to PostgreSQL at {}", self.inner.shown)))?;
        let held = Arc::new(std::sync::atomic::AtomicBool::new(true));
        {
            let (held, name) = (held.clone(), name.to_string());
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, lock = %name, "the PostgreSQL connection holding a lock ended");
                }
                held.store(false, Ordering::Release);
            });
        }
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&format!("strait-lock:{name}")])
            .await
            .map_err(pg(format_args!("taking the lock {name}")))?;
        Ok(row.get::<_, bool>(0).then(|| crate::Lease::new(held, Box::new(client))))
    }
}

/// One watch stream's state. It does not keep the store open: the stream ends once the last
/// handle on the store is dropped, as sled's does.
struct PgWatch {
    inner: std::sync::Weak<Inner>,
    next: u64,
    buffer: VecDeque<Event>,
    wake: tokio::sync::watch::Receiver<u64>,
    failed: bool,
}

impl PgWatch {
    /// Reads the next page from `next`; [`StoreError::Compacted`] when `next` was trimmed,
    /// `false` when the store is gone.
    async fn fill(&mut self) -> Result<bool, StoreError> {
        let next = self.next;
        let Some(inner) = self.inner.upgrade() else { return Ok(false) };
        let rows = PgStore { inner }
            .with_client(async |c| {
                c.query(
                    "SELECT revision, event FROM strait_events WHERE revision >= $1 ORDER BY revision LIMIT $2",
                    &[&(next as i64), &PAGE],
                )
                .await
                .map_err(pg("reading the event log"))
            })
            .await?;
        for (expected, row) in (next..).zip(&rows) {
            let revision = row.get::<_, i64>(0) as u64;
            if revision != expected {
                return Err(if expected == next {
                    StoreError::Compacted { requested: next.saturating_sub(1), oldest: revision }
                } else {
                    StoreError::Backend(format!("event log has a gap between revisions {} and {revision}", expected - 1))
                });
            }
            let event: Event =
                serde_json::from_str(row.get(1)).map_err(|e| StoreError::Backend(format!("decoding event {revision}: {e}")))?;
            self.buffer.push_back(event);
        }
        Ok(true)
    }

    async fn next_item(mut self) -> Option<(Result<Event, StoreError>, Self)> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                self.next = event.revision + 1;
                return Some((Ok(event), self));
            }
            // Marked seen before reading, so a commit during the read wakes the next wait.
            self.wake.borrow_and_update();
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return None,
                // The database is down or restarting: the watch waits and reads again, so its
                // watcher sees every event once it is back.
                Err(StoreError::Unavailable(why)) => {
                    tracing::debug!(%why, "the event log is unreachable; reading it again shortly");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(error) => {
                    self.failed = true;
                    return Some((Err(error), self));
                }
            }
            if self.buffer.is_empty() {
                // A closed channel: the store is gone. A timeout: look again anyway.
                if let Ok(Err(_)) = tokio::time::timeout(POLL, self.wake.changed()).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(super::redact("postgres://strait:s3cret@db.internal:5432/strait"), "postgres://strait:***@db.internal:5432/strait");
        assert_eq!(super::redact("postgresql://strait@%2Ftmp%2Fpg:5432/postgres"), "postgresql://strait:***@%2Ftmp%2Fpg:5432/postgres");
        assert_eq!(super::redact("sled"), "sled");
        assert_eq!(super::redact("host=db password=s3cret user=strait"), "host=db password=*** user=strait");
        assert_eq!(
            super::redact("postgres://db/strait?password=s3cret&sslmode=require"),
            "postgres://db/strait?password=***&sslmode=require"
        );
    }
}
