//! Deterministic simulation of the two-way calendar sync, Exchange and Google (DESIGN-NOTES 5,
//! issue #13).
//!
//! One seeded generator drives, step by step, every actor around the real core code: the
//! platform (session changes with versions, delivered late, reordered and twice), the staff
//! member in Outlook (delete, restore, move onto free time, onto another booking or beyond
//! the sync window, decline, busy events of their own), Graph (pushes delivered, dropped or
//! duplicated; 429 and 503 answers; answers lost after the write happened; delta tokens
//! expiring; deletions it never reports), the store (the next write, the next mapping
//! transaction or the next session write refused), the bus (publishes refused, past the
//! immediate retries), the scheduled jobs, the clock (minutes, and now and then a day),
//! restarts (everything in memory rebuilt; the store, the queue and Graph's state survive)
//! and two operations at once (a platform change held at its Graph write while another
//! platform change, a sync round or the staff member runs: a deterministic interleaving;
//! the first write to reach the gate, Graph's or Google's, is held). Graph is the stateful
//! simulator over loopback HTTP, reached through the real HTTP adapter; the store is the memory
//! table; nothing sleeps. Same seed, same history.
//!
//! Which calendars the staff member has is drawn per seed from the variant's stream
//! ([`Calendars`]: Exchange only, Google only, or both), so an Exchange-only history draws
//! exactly what it always did. With Google connected the platform's changes go through the
//! calendar seam ([`voyage_core::calendar::changes::apply`], the body of
//! `POST /v1/sessions/changes`), which writes every calendar; the staff member acts in
//! Google Calendar too (delete, restore from the bin, move, decline, busy time of their own);
//! Google's pushes (one per change of the calendar, found by comparing it with the last look)
//! are delivered by the simulation late, out of order, twice or never, and queue syncs on
//! the google-sync queue, whose messages run as an actor (a sync without a push: the
//! five-minute job); Google answers 429 or 503, loses a write's answer, forgets its sync
//! tokens; the Google simulator is reached through the real HTTP adapter (no retries, no
//! waits) behind the per-user budget. With both calendars, actors pick one by a coin toss.
//! A booking change that came from one calendar and could not be written to the other at
//! once is queued as a follow-up on the outbound queue (durable, like the others), whose
//! messages the simulation delivers late, in any order, and again after a failure.
//!
//! After the history the system settles (faults cleared, every message delivered, the
//! grace passed, a backstop round of every calendar run) and the invariants of issue #10 are
//! checked, in each connected calendar: a cancelled session has no live event; a confirmed
//! one has exactly one, at its booked time (both for sessions not yet over: one that ended
//! before the sync window is history); a session is cancelled only if the platform cancelled
//! it or one of its events was really deleted by the staff member (no restore in that
//! calendar within the grace); webhooks match: no `session.cancelled` for a booking that ends
//! confirmed, none twice.
//!
//! ## Two staff members ([`Mode::TwoStaff`], [`run_with`])
//!
//! A second mode adds a second staff member, bob ([`STAFF2`], [`EMAIL2`]), whose calendars
//! are drawn from a stream of their own (Exchange, Google or both, or now and then none; see
//! [`Member`]), so the one-staff histories ([`run`], [`Mode::OneStaff`]) draw exactly what
//! they always did: every draw the mode adds is made only in it. The platform books each
//! session with one of the two and its `updated` changes may give it to the other (a new
//! `staff_id` in a versioned change): sometimes followed at once by the move back, sometimes
//! sent twice (two deliveries of the same move), and an interleaving may hold a change at its
//! calendar write while its own twin is delivered. Changes always go through the calendar
//! seam (`POST /v1/sessions/changes`: a staff member without a calendar is a `no_connection`,
//! not a failure). The staff-member actors act in both staff members' calendars (which one
//! drawn), each deletion logged with whether the session was, at that moment, assigned to
//! the one deleting (in the store or by the platform's latest change).
//!
//! After settling, per staff member: a confirmed session has exactly one live event, at its
//! booked time, in each calendar of the staff member it is assigned to (the store's
//! `staff_id`, which must be the platform's last word) and none in the other's; a cancelled
//! one has none anywhere; a session is cancelled only if the platform cancelled it or one of
//! its events was really deleted by a staff member it was assigned to when they deleted it
//! (a deletion in the calendar of a staff member the session had been moved away from is
//! not one: the system deletes that event itself). The exemptions are the same: sessions
//! that ended before the window are history; an event a staff member restored (or, in a
//! calendar the session is not in, moved) outside the window is out of the sync's sight.
//! Webhooks as in one-staff mode.
//!
//! The tests run both modes (`VOYAGE_SIM_MODE=two-staff` makes `VOYAGE_SIM_SEED`,
//! `VOYAGE_SIM_SEEDS` and `VOYAGE_SIM_FIRST` apply to the two-staff test;
//! `./scripts/simulate --two-staff`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use axum::body::Body;
use chrono::{DateTime, Duration, TimeZone, Utc};
use http::Request;
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tower::ServiceExt;
use voyage_core::config::Config;
use voyage_core::deps::{Deps, QueueName};
use voyage_core::exchange::api::{
    CalendarRef, DeltaPage, DeltaRequest, EventWrite, GraphApi, GraphCredentials, GraphError,
    GraphEvent, GraphSubscription, NewSubscription,
};
use voyage_core::exchange::push::SyncRequest;
use voyage_core::exchange::{outbound, push, sync};
use voyage_core::google::api::{
    Channel, EventsPage, GoogleApi, GoogleError, GoogleEvent, GoogleEventWrite, ListRequest,
    ServiceAccount, WatchRequest,
};
use voyage_core::model::SessionStatus;
use voyage_core::ports::memory::MemoryTable;
use voyage_core::ports::queue::{Envelope, QueueError, ReceivedMessage};
use voyage_core::ports::table::{Index, Item, Key, Page, Query, StoreError, TxWrite};
use voyage_core::ports::{
    BusError, BusEvent, Clock, Condition, EventBus, ManualClock, Queue, Table,
};
use voyage_core::store::Store;
use voyage_providers::graph::{GraphHttp, RetryBudget};
use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
use voyage_simulators::{CapturedNotification, Fault, GoogleSimulator, GraphSimulator};

pub const COMPANY: &str = "acme";
pub const STAFF: &str = "ann";
pub const EMAIL: &str = "ann@contoso.example";
/// The second staff member of [`Mode::TwoStaff`].
pub const STAFF2: &str = "bob";
pub const EMAIL2: &str = "bob@contoso.example";
const TENANT: &str = "contoso-tenant";
const CLIENT_ID: &str = "voyage-app";
const CLIENT_SECRET: &str = "s3cret-Graph~value";
/// The grace period of pending cancellations in the simulation.
pub const GRACE_MINUTES: i64 = 10;
/// Steps of one history.
pub const STEPS: usize = 40;
const SESSIONS: usize = 3;

/// The clock's start: the current hour (the simulator checks subscription expiry against
/// the real clock); every time in a history is relative to it, so a seed replays the same
/// history on any day. Sessions are booked for the next day.
fn epoch() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    Utc.timestamp_opt(now - now % 3600, 0)
        .single()
        .unwrap_or_default()
}

/// Hourly slots on the day after `now` (from the start of its hour), plus a few beyond the
/// 180-day window.
fn slot(now: DateTime<Utc>, i: u32) -> (DateTime<Utc>, DateTime<Utc>) {
    let hour = now.timestamp() - now.timestamp() % 3600;
    let day = Utc.timestamp_opt(hour, 0).single().unwrap_or(now) + Duration::hours(24);
    let start = if i < 8 {
        day + Duration::hours(i as i64)
    } else {
        // 200+ days ahead: outside any window the sync reads.
        day + Duration::days(200 + i as i64)
    };
    (start, start + Duration::hours(1))
}

const SLOTS: u32 = 10;

// ---------------------------------------------------------------------------------------
// Fault-injecting adapters around the real ones.

/// Which write an injected store fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Whatever write comes next.
    Any,
    /// The next transaction that writes a mapping (an outbound closing commit, a mapping save).
    MappingWrite,
    /// The next session record written on its own (a booking command, an outbox clear).
    SessionPut,
}

/// The memory table, refusing the next write of a kind when told to.
pub struct FaultyTable {
    inner: MemoryTable,
    fail: Mutex<Option<WriteKind>>,
}

impl FaultyTable {
    fn new() -> Self {
        FaultyTable {
            inner: MemoryTable::new(),
            fail: Mutex::new(None),
        }
    }

    fn fail_next(&self, kind: Option<WriteKind>) {
        if let Ok(mut f) = self.fail.lock() {
            *f = kind;
        }
    }

    fn write(&self, kind: WriteKind) -> Result<(), StoreError> {
        let Ok(mut armed) = self.fail.lock() else {
            return Ok(());
        };
        if armed.is_some_and(|k| k == WriteKind::Any || k == kind) {
            *armed = None;
            return Err(StoreError::Unavailable("injected store fault".into()));
        }
        Ok(())
    }

    fn kind_of_put(item: &Item) -> WriteKind {
        if item.key.sk.starts_with("SESS#") {
            WriteKind::SessionPut
        } else {
            WriteKind::Any
        }
    }

    fn kind_of_transaction(writes: &[TxWrite]) -> WriteKind {
        let maps = writes.iter().any(|w| match w {
            TxWrite::Put(item, _) => item.key.sk.starts_with("MAP"),
            TxWrite::Delete(key, _) => key.sk.starts_with("MAP"),
            TxWrite::Check(..) => false,
        });
        if maps {
            WriteKind::MappingWrite
        } else {
            WriteKind::Any
        }
    }
}

#[async_trait]
impl Table for FaultyTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.inner.get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.inner.batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.write(Self::kind_of_put(&item))?;
        self.inner.put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.write(WriteKind::Any)?;
        self.inner.delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.write(WriteKind::Any)?;
        self.inner.batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        self.write(Self::kind_of_transaction(&writes))?;
        self.inner.transact(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.inner.query(query).await
    }
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.inner.query_index(index, query).await
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.purge_expired(now).await
    }
}

/// The bus: records what was published; refuses the next `n` publishes when told to.
#[derive(Default)]
pub struct RecordingBus {
    events: Mutex<Vec<BusEvent>>,
    refuse: AtomicU32,
}

impl RecordingBus {
    fn refuse_next(&self, n: u32) {
        self.refuse.store(n, Ordering::SeqCst);
    }

    pub fn events(&self) -> Vec<BusEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl EventBus for RecordingBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError> {
        let left = self.refuse.load(Ordering::SeqCst);
        if left > 0 {
            self.refuse.store(left - 1, Ordering::SeqCst);
            return Err(BusError::Unavailable("injected bus fault".into()));
        }
        if let Ok(mut e) = self.events.lock() {
            e.extend_from_slice(events);
        }
        Ok(())
    }
}

/// The inbound queue: a durable list (SQS survives restarts); the simulation takes messages
/// itself, in an order it chooses.
#[derive(Default)]
pub struct ListQueue {
    bodies: Mutex<VecDeque<String>>,
}

impl ListQueue {
    fn push(&self, body: String) {
        if let Ok(mut b) = self.bodies.lock() {
            b.push_back(body);
        }
    }

    fn len(&self) -> usize {
        self.bodies.lock().map(|b| b.len()).unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, i: usize) -> Option<String> {
        self.bodies.lock().ok()?.remove(i)
    }
}

#[async_trait]
impl Queue for ListQueue {
    async fn send(&self, body: &str, _delay: StdDuration) -> Result<(), QueueError> {
        self.push(body.to_string());
        Ok(())
    }
    async fn receive(
        &self,
        _max: usize,
        _wait: StdDuration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _receipt: &str) -> Result<(), QueueError> {
        Ok(())
    }
    async fn release(&self, _receipt: &str, _delay: StdDuration) -> Result<(), QueueError> {
        Ok(())
    }
}

/// The real Graph adapter, whose next answer can be lost after Graph acted on the request
/// (a timeout after the write happened), and whose next write can be held at a gate while
/// another actor runs (a deterministic interleaving of two operations).
pub struct LossyGraph {
    /// The Graph client behind the mailbox limits ([`voyage_core::throttle`]): the gate is
    /// outside them, so a write held at its gate does not hold a mailbox slot the other
    /// actor's round waits for (a harness artefact: a real request in flight ends).
    inner: Arc<dyn GraphApi>,
    lose_next: AtomicU32,
    gate: GateSlot,
}

/// A write held until released: `reached` tells the simulation the write is waiting.
struct Gate {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The one gate both calendars' writes pass (the first write to arrive, Graph's or
/// Google's, takes it).
type GateSlot = Arc<Mutex<Option<Gate>>>;

/// Waits at the gate if one is armed (the first write to arrive takes it).
async fn pass_gate(slot: &GateSlot) {
    let gate = slot.lock().ok().and_then(|mut g| g.take());
    if let Some(g) = gate {
        let _ = g.reached.send(());
        let _ = g.release.await;
    }
}

fn disarm(slot: &GateSlot) {
    if let Ok(mut g) = slot.lock() {
        g.take();
    }
}

impl LossyGraph {
    async fn pass_gate(&self) {
        pass_gate(&self.gate).await
    }

    fn lose<T>(&self, result: Result<T, GraphError>) -> Result<T, GraphError> {
        let left = self.lose_next.load(Ordering::SeqCst);
        if left > 0 {
            self.lose_next.store(left - 1, Ordering::SeqCst);
            return Err(GraphError::Unavailable(
                "injected: the answer was lost".into(),
            ));
        }
        result
    }
}

#[async_trait]
impl GraphApi for LossyGraph {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        self.pass_gate().await;
        self.lose(self.inner.create_event(creds, calendar, event).await)
    }
    async fn update_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
        etag: Option<&str>,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        self.lose(
            self.inner
                .update_event(creds, calendar, id, etag, event)
                .await,
        )
    }
    async fn get_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<GraphEvent, GraphError> {
        self.inner.get_event(creds, calendar, id).await
    }
    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
        self.inner.get_events(creds, calendar, ids).await
    }
    async fn mailbox_time_zone(
        &self,
        creds: &GraphCredentials,
        user: &str,
    ) -> Result<String, GraphError> {
        self.inner.mailbox_time_zone(creds, user).await
    }
    async fn delete_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<(), GraphError> {
        self.pass_gate().await;
        self.lose(self.inner.delete_event(creds, calendar, id).await)
    }
    async fn create_subscription(
        &self,
        creds: &GraphCredentials,
        sub: &NewSubscription,
    ) -> Result<GraphSubscription, GraphError> {
        self.inner.create_subscription(creds, sub).await
    }
    async fn renew_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<GraphSubscription, GraphError> {
        self.inner.renew_subscription(creds, id, expires_at).await
    }
    async fn delete_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
    ) -> Result<(), GraphError> {
        self.inner.delete_subscription(creds, id).await
    }
    async fn delta_page(
        &self,
        creds: &GraphCredentials,
        request: &DeltaRequest,
    ) -> Result<DeltaPage, GraphError> {
        self.inner.delta_page(creds, request).await
    }
}

/// The real Google adapter (behind the per-user budget), whose next write's answer can be
/// lost after Google acted on it, and whose writes pass the simulation's gate (see
/// [`LossyGraph`]).
pub struct LossyGoogle {
    inner: Arc<dyn GoogleApi>,
    lose_next: AtomicU32,
    gate: GateSlot,
}

impl LossyGoogle {
    fn lose<T>(&self, result: Result<T, GoogleError>) -> Result<T, GoogleError> {
        let left = self.lose_next.load(Ordering::SeqCst);
        if left > 0 {
            self.lose_next.store(left - 1, Ordering::SeqCst);
            return Err(GoogleError::Unavailable(
                "injected: the answer was lost".into(),
            ));
        }
        result
    }
}

#[async_trait]
impl GoogleApi for LossyGoogle {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &ListRequest,
    ) -> Result<EventsPage, GoogleError> {
        self.inner.list_events(account, subject, request).await
    }
    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &WatchRequest,
    ) -> Result<Channel, GoogleError> {
        self.inner.watch(account, subject, request).await
    }
    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError> {
        self.inner
            .stop_channel(account, subject, channel_id, resource_id)
            .await
    }
    async fn insert_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        pass_gate(&self.gate).await;
        self.lose(
            self.inner
                .insert_event(account, subject, calendar_id, event)
                .await,
        )
    }
    async fn update_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        pass_gate(&self.gate).await;
        self.lose(
            self.inner
                .update_event(account, subject, calendar_id, event_id, etag, event)
                .await,
        )
    }
    async fn get_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<GoogleEvent, GoogleError> {
        self.inner
            .get_event(account, subject, calendar_id, event_id)
            .await
    }
    async fn delete_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
    ) -> Result<(), GoogleError> {
        pass_gate(&self.gate).await;
        self.lose(
            self.inner
                .delete_event(account, subject, calendar_id, event_id, etag)
                .await,
        )
    }
}

// ---------------------------------------------------------------------------------------
// The platform's and the staff member's side, as the simulation models them.

/// What the platform believes about one of its sessions.
#[derive(Debug, Clone)]
struct PlatformSession {
    version: u64,
    slot: u32,
    /// The platform cancelled it (its own decision).
    cancelled_by_platform: bool,
    /// The platform learnt (webhook) that the booking was cancelled: it changes it no more.
    closed: bool,
    /// The staff member it is given to (an index into [`World::members`]; always ann, 0, in
    /// one-staff mode).
    staff: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StaffAct {
    Delete,
    Restore,
    /// A move (for the exemptions of a calendar the session is not in, and for the echo
    /// invariant: a reschedule from a calendar needs one).
    Move,
    /// A decline (the echo invariant: a decline flag needs one).
    Decline,
}

/// One act of a staff member on one of a session's events.
#[derive(Debug, Clone, Copy)]
struct StaffEntry {
    at: DateTime<Utc>,
    /// Whose calendar (an index into [`World::members`]).
    member: usize,
    cal: Cal,
    act: StaffAct,
    /// The session was assigned to that staff member when they acted (in the store or by
    /// the platform's latest change; always in one-staff mode).
    owner: bool,
}

/// One of the staff member's calendars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cal {
    Exchange,
    Google,
}

/// A live event of the platform in one calendar: its session, start and end.
type LiveEvent = (String, DateTime<Utc>, DateTime<Utc>);

/// Which calendars the staff member has connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendars {
    ExchangeOnly,
    GoogleOnly,
    Both,
}

impl Calendars {
    fn exchange(self) -> bool {
        self != Calendars::GoogleOnly
    }

    fn google(self) -> bool {
        self != Calendars::ExchangeOnly
    }
}

/// Which histories a run draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One staff member, ann: the histories this harness always drew.
    #[default]
    OneStaff,
    /// Two staff members, ann and bob; the platform gives sessions to either and moves them
    /// between the two (see the module docs).
    TwoStaff,
}

impl Mode {
    /// `VOYAGE_SIM_MODE`: `two-staff`, or `one-staff` (the default).
    pub fn from_env() -> Mode {
        match std::env::var("VOYAGE_SIM_MODE").as_deref().map(str::trim) {
            Ok("two-staff") => Mode::TwoStaff,
            Ok("one-staff") | Ok("") | Err(_) => Mode::OneStaff,
            Ok(other) => panic!("VOYAGE_SIM_MODE={other}: want one-staff or two-staff"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::OneStaff => "one-staff",
            Mode::TwoStaff => "two-staff",
        }
    }
}

/// One staff member of the history: ann (always; her calendars are the variant's) and, in
/// [`Mode::TwoStaff`], bob (his calendars drawn from a stream of their own, so ann's variant
/// stays as it was: Exchange, Google or both as hers are drawn, or none one time in ten).
#[derive(Debug, Clone)]
pub struct Member {
    pub staff: &'static str,
    pub email: &'static str,
    /// `None`: no calendar connected (the platform's changes for them write nothing).
    pub calendars: Option<Calendars>,
    /// The Google connection's id, when the staff member has one.
    gconn: Option<String>,
    /// The Google calendar as last seen: a change since means Google pushed.
    gprint: String,
    gpush_number: u64,
}

impl Member {
    fn new(staff: &'static str, email: &'static str, calendars: Option<Calendars>) -> Member {
        Member {
            staff,
            email,
            calendars,
            gconn: None,
            gprint: String::new(),
            gpush_number: 0,
        }
    }

    fn exchange(&self) -> bool {
        self.calendars.is_some_and(|c| c.exchange())
    }

    fn google(&self) -> bool {
        self.calendars.is_some_and(|c| c.google())
    }

    /// Bob's calendars, drawn from the seed's stream for him.
    fn bob_calendars(seed: u64) -> Option<Calendars> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x626f_6273_7461_6666);
        match rng.gen_range(0..10) {
            0..=2 => Some(Calendars::ExchangeOnly),
            3..=5 => Some(Calendars::Both),
            6..=8 => Some(Calendars::GoogleOnly),
            _ => None,
        }
    }
}

/// The result of one history.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub steps: usize,
    /// What happened, one line a step (printed on failure).
    pub trace: Vec<String>,
    /// The invariants that failed (empty: the history passed).
    pub violations: Vec<String>,
}

pub struct World {
    seed: u64,
    epoch: DateTime<Utc>,
    rng: StdRng,
    variant: Variant,
    clock: Arc<ManualClock>,
    table: Arc<FaultyTable>,
    bus: Arc<RecordingBus>,
    queue: Arc<ListQueue>,
    sim: GraphSimulator,
    sim_url: String,
    graph: Arc<LossyGraph>,
    /// Google's simulator, its URL, and where our channels' pushes go (a sink: the
    /// simulation delivers Google's pushes itself, see [`World::collect_google_pushes`]).
    gsim: GoogleSimulator,
    gsim_url: String,
    push_sink: String,
    google: Arc<LossyGoogle>,
    /// The google-sync queue (durable, like the inbound one).
    gqueue: Arc<ListQueue>,
    /// The outbound queue: follow-ups the booking engine queued for a calendar it could not
    /// write at once (durable too).
    oqueue: Arc<ListQueue>,
    mode: Mode,
    /// Interleavings also hold a sync round or the pending-cancellation sweep at its first
    /// calendar write ([`World::interleave_round`]), and half the sync rounds are held so;
    /// off in the histories of [`run_with`], whose draws stay as they were.
    rounds_held: bool,
    /// The staff members: ann first (her calendars the variant's), then bob in two-staff
    /// mode. Each holds its Google connection, pushes' numbering and last look.
    members: Vec<Member>,
    /// Google pushes sent and not yet delivered (whose calendar, message number).
    gpushes: Vec<(usize, u64)>,
    deps: Arc<Deps>,
    platform: BTreeMap<String, PlatformSession>,
    /// Platform changes sent but not yet accepted (the platform retries until a 2xx).
    outbox: Vec<Value>,
    pushes: Vec<CapturedNotification>,
    staff_log: BTreeMap<String, Vec<StaffEntry>>,
    bus_seen: usize,
    trace: Vec<String>,
    /// The simulators and the push sink, served until the world is dropped (the end of its
    /// seed).
    _servers: [crate::graph::Server; 3],
}

/// How a history's world is set up beyond its steps, drawn from a stream of its own (so the
/// steps' stream, and with it every regression seed's history, stays as it was).
#[derive(Debug, Clone, Copy)]
struct Variant {
    /// Every invocation applies one delta page, then checkpoints and queues the rest.
    zero_budget: bool,
    /// Delta pages of at most this many events.
    page_size: Option<usize>,
    /// Delta entries leave out `showAs`, `isCancelled`, `isAllDay`, `responseStatus`.
    partial: bool,
    /// The staff member's calendars (drawn last, so the draws above stay as they were).
    calendars: Calendars,
}

impl Variant {
    fn of(seed: u64) -> Variant {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7661_7269_616e_7431);
        Variant {
            zero_budget: rng.gen_bool(0.3),
            page_size: rng.gen_bool(0.5).then(|| rng.gen_range(1..4)),
            partial: rng.gen_bool(0.3),
            calendars: match rng.gen_range(0..10) {
                0..=3 => Calendars::ExchangeOnly,
                4..=6 => Calendars::Both,
                _ => Calendars::GoogleOnly,
            },
        }
    }
}

/// Where the simulators answer, and where Google's pushes go.
struct Urls<'a> {
    graph: &'a str,
    google: &'a str,
    push_sink: &'a str,
}

fn config(urls: &Urls, variant: Variant, google: bool) -> Config {
    let budget = if variant.zero_budget { "0ms" } else { "60s" };
    let public = if google {
        urls.push_sink.to_string()
    } else {
        "https://voyage.example".to_string()
    };
    let sim_url = urls.graph;
    let env: BTreeMap<&str, String> = [
        ("VOYAGE_SYNC_BUDGET", budget.to_string()),
        ("VOYAGE_GRAPH_BASE_URL", sim_url.to_string()),
        ("VOYAGE_MS_LOGIN_BASE_URL", sim_url.to_string()),
        ("VOYAGE_GOOGLE_CALENDAR_BASE_URL", urls.google.to_string()),
        ("VOYAGE_GOOGLE_TOKEN_URL", format!("{}/token", urls.google)),
        ("VOYAGE_PUBLIC_BASE_URL", public),
        (
            "VOYAGE_PENDING_CANCELLATION_GRACE",
            format!("{GRACE_MINUTES}m"),
        ),
        (
            "VOYAGE_CREDENTIALS_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    Config::from_lookup(|k| env.get(k).cloned()).expect("simulation config")
}

impl World {
    /// A world on `seed`: the simulators, a tenant with credentials and the staff members'
    /// connections (ann's alone in one-staff mode).
    pub async fn new(seed: u64, mode: Mode) -> World {
        let sim = GraphSimulator::seeded(seed);
        sim.register_app(TENANT, CLIENT_ID, CLIENT_SECRET);
        sim.capture_notifications(true);
        let sim_server = crate::graph::serve_owned(sim.router()).await;
        let sim_url = sim_server.url.clone();
        let gsim = GoogleSimulator::new();
        gsim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
            .expect("the sandbox account");
        let gsim_server = crate::graph::serve_owned(gsim.router()).await;
        let gsim_url = gsim_server.url.clone();
        // Our channels' address: it answers every push and keeps none.
        let push_server =
            crate::graph::serve_owned(axum::Router::new().fallback(|| async { "" })).await;
        let push_sink = push_server.url.clone();
        let gqueue = Arc::new(ListQueue::default());
        let oqueue = Arc::new(ListQueue::default());
        let epoch = epoch();
        let clock = Arc::new(ManualClock::new(epoch));
        // Google stamps events' `updated`, and Graph their `lastModifiedDateTime`, on the
        // simulation's clock, as the providers' clocks and ours agree (the system compares
        // them): a seed replays whatever the time of day it runs at.
        let event_clock = clock.clone();
        gsim.set_event_clock(Arc::new(move || event_clock.now()));
        let event_clock = clock.clone();
        sim.set_event_clock(Arc::new(move || event_clock.now()));
        let table = Arc::new(FaultyTable::new());
        let bus = Arc::new(RecordingBus::default());
        let queue = Arc::new(ListQueue::default());
        let variant = Variant::of(seed);
        let mut members = vec![Member::new(STAFF, EMAIL, Some(variant.calendars))];
        if mode == Mode::TwoStaff {
            members.push(Member::new(STAFF2, EMAIL2, Member::bob_calendars(seed)));
        }
        let any_google = members.iter().any(Member::google);
        if let Some(max) = variant.page_size {
            sim.max_page_size(max);
        }
        if variant.partial {
            sim.partial_delta(&["showAs", "isCancelled", "isAllDay", "responseStatus"]);
        }
        let urls = Urls {
            graph: &sim_url,
            google: &gsim_url,
            push_sink: &push_sink,
        };
        let queues = Queues {
            inbound: &queue,
            google: &gqueue,
            outbound: &oqueue,
        };
        let (deps, graph, google) =
            build(&urls, variant, any_google, &clock, &table, &bus, &queues);
        let mut w = World {
            seed,
            epoch,
            rng: StdRng::seed_from_u64(seed),
            variant,
            clock,
            table,
            bus,
            queue,
            sim,
            sim_url,
            graph,
            gsim,
            gsim_url,
            push_sink,
            google,
            gqueue,
            oqueue,
            mode,
            rounds_held: false,
            members,
            gpushes: Vec::new(),
            deps,
            platform: BTreeMap::new(),
            outbox: Vec::new(),
            pushes: Vec::new(),
            staff_log: BTreeMap::new(),
            bus_seen: 0,
            trace: Vec::new(),
            _servers: [sim_server, gsim_server, push_server],
        };
        w.connect().await;
        w.log(format!("variant: {variant:?}"));
        if mode == Mode::TwoStaff {
            let bob = w.members[1].calendars;
            w.log(format!("two staff: bob's calendars {bob:?}"));
        }
        w
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
        let routes = voyage_fn_gateway::api::router(self.deps.clone());
        let router = voyage_http::finish(routes, voyage_http::Auth::Keys(self.deps.store.clone()));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = router.oneshot(req).await.expect("router");
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn connect(&mut self) {
        let key = voyage_core::auth::create_key(&self.deps.store, COMPANY, false, None)
            .await
            .expect("key")
            .plaintext;
        let mut credentials = (false, false);
        for m in 0..self.members.len() {
            if self.members[m].exchange() {
                self.connect_exchange(&key, m, !credentials.0).await;
                credentials.0 = true;
            }
            if self.members[m].google() {
                self.connect_google(&key, m, !credentials.1).await;
                credentials.1 = true;
            }
        }
        self.trace.clear();
    }

    async fn connect_google(&mut self, key: &str, m: usize, credentials: bool) {
        if credentials {
            let (status, body) = self
                .call(
                    "PUT",
                    "/v1/credentials/google",
                    key,
                    json!({"type": "service_account", "client_email": SANDBOX_CLIENT_EMAIL,
                        "private_key": SANDBOX_PRIVATE_KEY,
                        "token_uri": "https://oauth2.googleapis.com/token"}),
                )
                .await;
            assert_eq!(status, 200, "google credentials: {body}");
        }
        let (staff, email) = (self.members[m].staff, self.members[m].email);
        let (status, body) = self
            .call(
                "POST",
                "/v1/connections",
                key,
                json!({"provider": "google", "staff_id": staff, "staff_email": email,
                    "calendar_id": email}),
            )
            .await;
        assert_eq!(status, 201, "google connection: {body}");
        assert_eq!(body["status"], "active", "google connection: {body}");
        let gconn = body["id"].as_str().map(str::to_string);
        self.members[m].gconn = gconn.clone();
        // The first sync lists the calendar and starts its cursor.
        voyage_core::google::push::queue_sync(
            &self.deps,
            COMPANY,
            gconn.as_deref().unwrap_or_default(),
            StdDuration::ZERO,
        )
        .await
        .expect("first google sync queued");
        self.run_google_round(Some(0)).await;
        self.members[m].gprint = self.google_print(m);
    }

    async fn connect_exchange(&mut self, key: &str, m: usize, credentials: bool) {
        let key = key.to_string();
        if credentials {
            let (status, body) = self
                .call(
                    "PUT",
                    "/v1/credentials/exchange",
                    &key,
                    json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}),
                )
                .await;
            assert_eq!(status, 200, "credentials: {body}");
        }
        let (staff, email) = (self.members[m].staff, self.members[m].email);
        let (status, body) = self
            .call(
                "POST",
                "/v1/connections",
                &key,
                json!({"provider": "exchange", "staff_id": staff, "staff_email": email}),
            )
            .await;
        assert_eq!(status, 201, "connection: {body}");
        assert_eq!(body["status"], "active", "connection: {body}");
        // The first full sync (the hourly re-base job queues it for a connection without a
        // cursor; its first notification does too).
        sync::rebase_sync_windows(&self.deps)
            .await
            .expect("baseline queued");
        self.run_round(Some(0)).await;
    }

    fn log(&mut self, line: String) {
        let at = (self.clock.now() - self.epoch).num_minutes();
        if std::env::var("VOYAGE_SIM_LIVE").is_ok() {
            eprintln!("t+{at}m {line}");
        }
        self.trace.push(format!("t+{at}m {line}"));
    }

    // --- the platform -------------------------------------------------------------------

    fn platform_change(&mut self, id: &str, action: &str) {
        let Some(p) = self.platform.get_mut(id) else {
            return;
        };
        p.version += 1;
        let (start, end) = slot(self.clock.now(), p.slot);
        let staff = self.members[p.staff].staff;
        let change = json!({
            "action": action,
            "session": {
                "id": id, "company_id": COMPANY, "staff_id": staff,
                "start": start.to_rfc3339(), "end": end.to_rfc3339(),
                "time_zone": "UTC", "title": format!("Session {id}"),
                "version": p.version,
            }
        });
        let mut line = format!("platform {action} {id} v{} slot {}", p.version, p.slot);
        if self.mode == Mode::TwoStaff {
            line.push_str(&format!(" with {staff}"));
        }
        self.outbox.push(change);
        self.log(line);
    }

    /// Two-staff mode: an `updated` change that gives the session to the other staff member
    /// (at a slot of its own now and then); sometimes the same change sent twice (two
    /// deliveries of one move), sometimes the move back at once (both in flight).
    fn platform_gives_away(&mut self, id: &str) {
        let Some(p) = self.platform.get(id) else {
            return;
        };
        let (from, from_slot) = (p.staff, p.slot);
        let to = 1 - from;
        let slot = if self.rng.gen_bool(0.5) {
            from_slot
        } else {
            self.rng.gen_range(0..SLOTS)
        };
        if let Some(p) = self.platform.get_mut(id) {
            p.staff = to;
            p.slot = slot;
        }
        self.platform_change(id, "updated");
        match self.rng.gen_range(0..10) {
            0..=2 => {
                let twin = self.outbox.last().cloned();
                if let Some(twin) = twin {
                    self.outbox.push(twin);
                    self.log(format!("platform sends the move of {id} twice"));
                }
            }
            3..=5 => {
                let back_slot = if self.rng.gen_bool(0.5) {
                    from_slot
                } else {
                    self.rng.gen_range(0..SLOTS)
                };
                if let Some(p) = self.platform.get_mut(id) {
                    p.staff = from;
                    p.slot = back_slot;
                }
                self.log(format!("platform moves {id} back at once"));
                self.platform_change(id, "updated");
            }
            _ => {}
        }
    }

    fn platform_acts(&mut self) {
        let open: Vec<String> = self
            .platform
            .iter()
            .filter(|(_, p)| !p.closed)
            .map(|(id, _)| id.clone())
            .collect();
        if self.platform.len() < SESSIONS && (open.is_empty() || self.rng.gen_bool(0.4)) {
            let id = format!("s{}", self.platform.len() + 1);
            let slot = self.rng.gen_range(0..SLOTS);
            // Two-staff mode: booked with either (a draw of that mode only).
            let staff = match self.mode {
                Mode::OneStaff => 0,
                Mode::TwoStaff => self.rng.gen_range(0..2),
            };
            self.platform.insert(
                id.clone(),
                PlatformSession {
                    version: 0,
                    slot,
                    cancelled_by_platform: false,
                    closed: false,
                    staff,
                },
            );
            self.platform_change(&id, "created");
            return;
        }
        if open.is_empty() {
            return;
        }
        let id = open[self.rng.gen_range(0..open.len())].clone();
        if self.rng.gen_bool(0.25) {
            if let Some(p) = self.platform.get_mut(&id) {
                p.cancelled_by_platform = true;
                p.closed = true;
            }
            self.platform_change(&id, "cancelled");
        } else if self.mode == Mode::TwoStaff && self.rng.gen_bool(0.5) {
            self.platform_gives_away(&id);
        } else {
            let slot = self.rng.gen_range(0..SLOTS);
            if let Some(p) = self.platform.get_mut(&id) {
                p.slot = slot;
            }
            self.platform_change(&id, "updated");
        }
    }

    /// Delivers one queued platform change (any of them: the platform's messages arrive
    /// out of order), sometimes keeping a copy to deliver again.
    async fn deliver_platform(&mut self, index: Option<usize>) -> bool {
        if self.outbox.is_empty() {
            return false;
        }
        let i = index.unwrap_or_else(|| self.rng.gen_range(0..self.outbox.len()));
        let change = self.outbox.remove(i);
        let duplicate = index.is_none() && self.rng.gen_bool(0.15);
        let input: outbound::SessionChangeInput =
            serde_json::from_value(change.clone()).expect("a valid change");
        let valid = input.validate().expect("a valid change");
        let (what, retry) = write_change(&self.deps, &valid, self.seam()).await;
        let line = format!(
            "deliver {} {} v{:?}: {what}",
            format!("{:?}", valid.action).to_lowercase(),
            valid.id,
            valid.version,
        );
        self.log(line);
        if retry || duplicate {
            self.outbox.push(change);
        }
        true
    }

    /// Two operations at once, deterministically: a platform change is held at its calendar
    /// write (Graph's or Google's) while another actor (another platform change, a delta round, the staff member)
    /// runs to the end; then the held write goes on.
    async fn interleave(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let i = self.rng.gen_range(0..self.outbox.len());
        let change = self.outbox.remove(i);
        let input: outbound::SessionChangeInput =
            serde_json::from_value(change.clone()).expect("a valid change");
        let valid = input.validate().expect("a valid change");
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        let seam = self.seam();
        if let Ok(mut g) = self.graph.gate.lock() {
            *g = Some(Gate {
                reached: reached_tx,
                release: release_rx,
            });
        }
        self.log(format!(
            "interleave: {} {} v{:?} held at its calendar write",
            format!("{:?}", valid.action).to_lowercase(),
            valid.id,
            valid.version
        ));
        let deps = self.deps.clone();
        let graph = self.graph.clone();
        let held = async move {
            let result = write_change(&deps, &valid, seam).await;
            // Never reached the gate (stale, nothing to write): let the other side go.
            disarm(&graph.gate);
            result
        };
        let other = async {
            let _ = reached_rx.await;
            // Two-staff mode: a fourth choice, the held change's own twin delivered
            // meanwhile (the platform's retry of a change whose answer is late).
            let choices = match self.mode {
                Mode::OneStaff => 3,
                Mode::TwoStaff => 4,
            };
            match self.rng.gen_range(0..choices) {
                0 => {
                    self.deliver_platform(None).await;
                }
                1 => {
                    self.round_of_some_calendar().await;
                }
                3 => {
                    self.outbox.push(change.clone());
                    let last = self.outbox.len() - 1;
                    self.log("interleave: its twin is delivered meanwhile".into());
                    self.deliver_platform(Some(last)).await;
                }
                _ => self.staff_acts().await,
            }
            let _ = release_tx.send(());
        };
        let ((what, retry), ()) = tokio::join!(held, other);
        self.log(format!("interleave: the held change ends {what}"));
        if retry {
            self.outbox.push(change);
        }
    }

    /// Two operations at once, the other way round from [`World::interleave`]: a sync round
    /// (Exchange's or Google's) or the pending-cancellation sweep is held at its first
    /// calendar write (a write-back, a deletion, or the write of a booking command's change
    /// to the staff member's other calendar: the follow-up), and meanwhile the platform
    /// delivers a change (made now if none waits), the staff member acts, or the sweep runs.
    /// A round that fails is offered again by its queue, as after any failure.
    async fn interleave_round(&mut self) {
        let graph = self.graph.clone();
        let deps = self.deps.clone();
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        // Which: among the rounds queued, and the sweep.
        let kinds: Vec<u8> = [
            (0, !self.queue.is_empty()),
            (1, !self.gqueue.is_empty()),
            (2, true),
        ]
        .into_iter()
        .filter_map(|(k, queued)| queued.then_some(k))
        .collect();
        let held: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> =
            match kinds[self.rng.gen_range(0..kinds.len())] {
                0 => {
                    let i = self.rng.gen_range(0..self.queue.len());
                    let Some(body) = self.queue.remove(i) else {
                        return;
                    };
                    let envelope: Envelope = serde_json::from_str(&body).expect("an envelope");
                    let req: SyncRequest =
                        serde_json::from_value(envelope.payload).expect("a sync request");
                    let queue = self.queue.clone();
                    Box::pin(async move {
                        match sync::handle(&deps, &req).await {
                            Ok(r) => format!("a round: {} commands", r.commands),
                            Err(e) => {
                                queue.push(body);
                                format!("a failed round: {e}")
                            }
                        }
                    })
                }
                1 => {
                    let i = self.rng.gen_range(0..self.gqueue.len());
                    let Some(body) = self.gqueue.remove(i) else {
                        return;
                    };
                    self.clock.advance(Duration::seconds(
                        voyage_core::google::push::COALESCE_SECONDS + 1,
                    ));
                    let envelope: Envelope = serde_json::from_str(&body).expect("an envelope");
                    let req: voyage_core::google::push::SyncRequest =
                        serde_json::from_value(envelope.payload).expect("a google sync request");
                    let gqueue = self.gqueue.clone();
                    Box::pin(async move {
                        let synced = match deps
                            .store
                            .get_connection(&req.company_id, &req.connection_id)
                            .await
                        {
                            Ok(mut conn) => {
                                voyage_core::google::sync::sync_connection(&deps, &mut conn).await
                            }
                            Err(e) => Err(e),
                        };
                        match synced {
                            Ok(r) => format!("a google round: {} commands", r.commands),
                            Err(e) => {
                                gqueue.push(body);
                                format!("a failed google round: {e}")
                            }
                        }
                    })
                }
                2 => Box::pin(async move {
                    match sync::commit_pending_cancellations(&deps).await {
                        Ok(r) => format!("the sweep: {} processed", r.processed),
                        Err(e) => format!("a failed sweep: {e}"),
                    }
                }),
                _ => return,
            };
        if let Ok(mut g) = self.graph.gate.lock() {
            *g = Some(Gate {
                reached: reached_tx,
                release: release_rx,
            });
        }
        self.log("interleave: a round held at its first calendar write".into());
        let held = async move {
            let what = held.await;
            // Never reached the gate (nothing to write): let the other side go.
            disarm(&graph.gate);
            what
        };
        let other = async {
            let _ = reached_rx.await;
            match self.rng.gen_range(0..3) {
                0 => {
                    if self.outbox.is_empty() {
                        self.platform_acts();
                    }
                    self.deliver_platform(None).await;
                }
                1 => self.staff_acts().await,
                _ => self.run_job(0).await,
            }
            let _ = release_tx.send(());
        };
        let (what, ()) = tokio::join!(held, other);
        self.log(format!("interleave: the held round ends: {what}"));
    }

    /// A sync round of one calendar: Exchange's delta round or Google's sync (which one,
    /// when the staff member has both, drawn).
    async fn round_of_some_calendar(&mut self) -> bool {
        if self.google_drawn() {
            self.run_google_round(None).await
        } else {
            self.run_round(None).await
        }
    }

    /// Whether an actor acts on the Google side: always without Exchange, never without
    /// Google, a coin toss with both (no draw for an Exchange-only history, whose stream
    /// stays as it was).
    fn google_drawn(&mut self) -> bool {
        match self.calendars() {
            Calendars::ExchangeOnly => false,
            Calendars::GoogleOnly => true,
            Calendars::Both => self.rng.gen_bool(0.5),
        }
    }

    /// The kinds of calendar connected, over every staff member (ann's in one-staff mode:
    /// the variant's).
    fn calendars(&self) -> Calendars {
        let exchange = self.members.iter().any(Member::exchange);
        let google = self.members.iter().any(Member::google);
        match (exchange, google) {
            (true, true) => Calendars::Both,
            (false, true) => Calendars::GoogleOnly,
            _ => Calendars::ExchangeOnly,
        }
    }

    fn any_google(&self) -> bool {
        self.members.iter().any(Member::google)
    }

    /// Whether platform changes go through the calendar seam (`POST /v1/sessions/changes`):
    /// with Google connected, and always in two-staff mode (a staff member without an
    /// Exchange connection is no failure there); else the Exchange route.
    fn seam(&self) -> bool {
        self.mode == Mode::TwoStaff || self.any_google()
    }

    /// Whether some staff member has a Google connection.
    fn any_gconn(&self) -> bool {
        self.members.iter().any(|m| m.gconn.is_some())
    }

    // --- the staff member -----------------------------------------------------------------

    /// The platform's events in staff member `m`'s Outlook calendar (deleted ones included).
    fn tagged_events(&self, m: usize) -> Vec<voyage_simulators::SimEventView> {
        self.sim
            .events_of(self.members[m].email)
            .into_iter()
            .filter(|e| e.session_tag.is_some())
            .collect()
    }

    fn session_of(e: &voyage_simulators::SimEventView) -> String {
        e.session_tag
            .as_deref()
            .and_then(|t| t.split_once('/'))
            .map(|(_, s)| s.to_string())
            .unwrap_or_default()
    }

    /// A staff member acts in one of their calendars (in two-staff mode, which staff member
    /// is drawn first, among those with a calendar).
    async fn staff_acts(&mut self) {
        let (m, google) = match self.mode {
            Mode::OneStaff => (0, self.google_drawn()),
            Mode::TwoStaff => {
                let with: Vec<usize> = (0..self.members.len())
                    .filter(|&m| self.members[m].calendars.is_some())
                    .collect();
                let m = with[self.rng.gen_range(0..with.len())];
                let google = match self.members[m].calendars {
                    Some(Calendars::GoogleOnly) => true,
                    Some(Calendars::Both) => self.rng.gen_bool(0.5),
                    _ => false,
                };
                (m, google)
            }
        };
        if google {
            self.staff_acts_in_google(m).await;
        } else {
            self.staff_acts_in_outlook(m).await;
        }
    }

    /// Who acts, as the trace names them ("staff" in one-staff mode, as it always did).
    fn who(&self, m: usize) -> &'static str {
        match self.mode {
            Mode::OneStaff => "staff",
            Mode::TwoStaff => self.members[m].staff,
        }
    }

    /// Logs a staff member's act on an event of `session` in their calendar `cal`, with
    /// whether the session was theirs then: in the store (what the system goes by) or by the
    /// platform's latest change (sent, maybe not yet delivered). Always so with one staff
    /// member.
    async fn staff_log(&mut self, session: &str, m: usize, cal: Cal, act: StaffAct) {
        let now = self.clock.now();
        let owner = match self.mode {
            Mode::OneStaff => true,
            Mode::TwoStaff => {
                let staff = self.members[m].staff;
                let platform = self.platform.get(session).is_some_and(|p| p.staff == m);
                let stored = match self.deps.store.find_session(COMPANY, session).await {
                    Ok(Some(s)) => s.staff_id == staff,
                    Ok(None) => false,
                    // Unknown: counted (the lenient side of the invariant).
                    Err(_) => true,
                };
                platform || stored
            }
        };
        self.staff_log
            .entry(session.to_string())
            .or_default()
            .push(StaffEntry {
                at: now,
                member: m,
                cal,
                act,
                owner,
            });
    }

    /// The platform's events in the staff member's Google calendar (deleted ones included).
    fn google_tagged_events(&self, m: usize) -> Vec<voyage_simulators::GoogleEventView> {
        self.gsim
            .events_of(self.members[m].email)
            .into_iter()
            .filter(|e| e.session_tag.is_some())
            .collect()
    }

    fn google_session_of(e: &voyage_simulators::GoogleEventView) -> String {
        e.session_tag
            .as_deref()
            .and_then(|t| t.split_once('/'))
            .map(|(_, s)| s.to_string())
            .unwrap_or_default()
    }

    /// The staff member in Google Calendar: the same acts as in Outlook (Google reports
    /// every deletion).
    async fn staff_acts_in_google(&mut self, m: usize) {
        let (email, who) = (self.members[m].email, self.who(m));
        let events = self.google_tagged_events(m);
        let live: Vec<_> = events
            .iter()
            .filter(|e| e.status != "cancelled")
            .cloned()
            .collect();
        let deleted: Vec<_> = events
            .iter()
            .filter(|e| e.status == "cancelled")
            .cloned()
            .collect();
        match self.rng.gen_range(0..10) {
            0..=2 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                if self.gsim.staff_delete(email, &e.id) {
                    let s = Self::google_session_of(e);
                    self.staff_log(&s, m, Cal::Google, StaffAct::Delete).await;
                    self.log(format!("{who} deletes the Google event of {s}"));
                }
            }
            3..=4 if !deleted.is_empty() => {
                let e = &deleted[self.rng.gen_range(0..deleted.len())];
                if self.gsim.staff_restore(email, &e.id) {
                    let s = Self::google_session_of(e);
                    self.staff_log(&s, m, Cal::Google, StaffAct::Restore).await;
                    self.log(format!("{who} restores the Google event of {s}"));
                }
            }
            5..=7 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                let to = self.rng.gen_range(0..SLOTS);
                let (start, end) = slot(self.clock.now(), to);
                if self.gsim.staff_move(email, &e.id, start, end) {
                    let s = Self::google_session_of(e);
                    self.staff_log(&s, m, Cal::Google, StaffAct::Move).await;
                    self.log(format!("{who} moves the Google event of {s} to slot {to}"));
                }
            }
            8 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                if self.gsim.staff_decline(email, &e.id) {
                    let s = Self::google_session_of(e);
                    self.staff_log(&s, m, Cal::Google, StaffAct::Decline).await;
                    self.log(format!("{who} declines the Google event of {s}"));
                }
            }
            _ => {
                let to = self.rng.gen_range(0..SLOTS);
                let (start, end) = slot(self.clock.now(), to);
                let event = json!({
                    "summary": "Dentist",
                    "start": {"dateTime": start.to_rfc3339()},
                    "end": {"dateTime": end.to_rfc3339()},
                });
                // Pushed as any change is (see `collect_google_pushes`).
                let done = self.gsim.seed_events(email, vec![event]);
                self.log(format!(
                    "{who} books busy time in Google at slot {to}{}",
                    if done.is_ok() { "" } else { " (refused)" }
                ));
            }
        }
    }

    async fn staff_acts_in_outlook(&mut self, m: usize) {
        let (email, who) = (self.members[m].email, self.who(m));
        let events = self.tagged_events(m);
        let live: Vec<_> = events.iter().filter(|e| !e.deleted).cloned().collect();
        let deleted: Vec<_> = events.iter().filter(|e| e.deleted).cloned().collect();
        match self.rng.gen_range(0..10) {
            0..=2 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                // One deletion in ten is one Graph never reports.
                let unreported = self.rng.gen_bool(0.1);
                let done = if unreported {
                    self.sim.staff_delete_unreported(email, &e.id)
                } else {
                    self.sim.staff_delete(email, &e.id)
                };
                if done && unreported {
                    self.log("(Graph will not report the next deletion)".into());
                }
                if done {
                    let s = Self::session_of(e);
                    self.staff_log(&s, m, Cal::Exchange, StaffAct::Delete).await;
                    self.log(format!("{who} deletes the event of {s}"));
                }
            }
            3..=4 if !deleted.is_empty() => {
                let e = &deleted[self.rng.gen_range(0..deleted.len())];
                if self.sim.staff_restore(email, &e.id) {
                    let s = Self::session_of(e);
                    self.staff_log(&s, m, Cal::Exchange, StaffAct::Restore)
                        .await;
                    self.log(format!("{who} restores the event of {s}"));
                }
            }
            5..=7 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                let to = self.rng.gen_range(0..SLOTS);
                let (start, end) = slot(self.clock.now(), to);
                if self.sim.staff_move(email, &e.id, start, end) {
                    let s = Self::session_of(e);
                    self.staff_log(&s, m, Cal::Exchange, StaffAct::Move).await;
                    self.log(format!("{who} moves the event of {s} to slot {to}"));
                }
            }
            8 if !live.is_empty() => {
                let e = &live[self.rng.gen_range(0..live.len())];
                if self.sim.staff_decline(email, &e.id) {
                    let s = Self::session_of(e);
                    self.staff_log(&s, m, Cal::Exchange, StaffAct::Decline)
                        .await;
                    self.log(format!("{who} declines the event of {s}"));
                }
            }
            _ => {
                let to = self.rng.gen_range(0..SLOTS);
                let (start, end) = slot(self.clock.now(), to);
                self.sim.staff_create(email, "Dentist", start, end, "busy");
                self.log(format!("{who} books busy time at slot {to}"));
            }
        }
    }

    // --- Graph's pushes and the inbound queue -------------------------------------------

    fn collect_pushes(&mut self) {
        let new = self.sim.take_notifications();
        self.pushes.extend(new);
        self.collect_google_pushes();
    }

    /// Staff member `m`'s Google calendar, every event with its status and etag: it changes
    /// with every change Google pushes for.
    fn google_print(&self, m: usize) -> String {
        self.gsim
            .events_of(self.members[m].email)
            .iter()
            .map(|e| format!("{}:{}:{};", e.id, e.status, e.etag))
            .collect()
    }

    /// Google pushes on every change of a calendar (ours, the staff member's): one push
    /// for the changes since the last look, which the simulation delivers itself (late, out
    /// of order, twice or never), so a history replays the same whatever the timing of the
    /// simulator's real pushes (they go to a sink). Each staff member's calendar has its
    /// own channel and numbering.
    fn collect_google_pushes(&mut self) {
        for m in 0..self.members.len() {
            if self.members[m].gconn.is_none() {
                continue;
            }
            let print = self.google_print(m);
            let member = &mut self.members[m];
            if print != member.gprint {
                member.gprint = print;
                member.gpush_number += 1;
                self.gpushes.push((m, member.gpush_number));
            }
        }
    }

    /// A push's name in the trace: its number (and, with two staff members, whose calendar).
    fn push_name(&self, m: usize, n: u64) -> String {
        match self.mode {
            Mode::OneStaff => format!("#{n}"),
            Mode::TwoStaff => format!("#{n} ({})", self.members[m].staff),
        }
    }

    async fn deliver_google_push(&mut self, all: bool) -> bool {
        self.collect_google_pushes();
        if self.gpushes.is_empty() {
            return false;
        }
        let batch: Vec<(usize, u64)> = if all {
            self.gpushes.drain(..).collect()
        } else {
            let i = self.rng.gen_range(0..self.gpushes.len());
            let (m, n) = self.gpushes.remove(i);
            match self.rng.gen_range(0..10) {
                0 => {
                    let name = self.push_name(m, n);
                    self.log(format!("Google push {name} is lost"));
                    return true;
                }
                1 => {
                    self.gpushes.push((m, n));
                    vec![(m, n)]
                }
                _ => vec![(m, n)],
            }
        };
        let mut delivered = false;
        for m in 0..self.members.len() {
            let numbers: Vec<u64> = batch
                .iter()
                .filter(|(who, _)| *who == m)
                .map(|(_, n)| *n)
                .collect();
            if numbers.is_empty() {
                continue;
            }
            delivered |= self.deliver_google_pushes_of(m, numbers).await;
        }
        delivered
    }

    /// Delivers pushes `batch` of staff member `m`'s Google channel.
    async fn deliver_google_pushes_of(&mut self, m: usize, batch: Vec<u64>) -> bool {
        let Some(id) = self.members[m].gconn.clone() else {
            return false;
        };
        let whose = match self.mode {
            Mode::OneStaff => String::new(),
            Mode::TwoStaff => format!(" ({})", self.members[m].staff),
        };
        let channel = match self.deps.store.get_connection(COMPANY, &id).await {
            Ok(c) => c.channel,
            Err(e) => {
                self.log(format!("Google pushes #{batch:?}{whose} refused: {e}"));
                return true;
            }
        };
        let Some(channel) = channel else {
            self.log(format!(
                "Google pushes to a connection without a channel{whose}"
            ));
            return true;
        };
        for n in batch {
            let push = voyage_core::google::push::Push {
                channel_id: Some(channel.id.clone()),
                token: Some(channel.secret.clone()),
                resource_state: Some("exists".into()),
                message_number: Some(n.to_string()),
            };
            let name = self.push_name(m, n);
            match voyage_core::google::push::accept(&self.deps, &push).await {
                Ok(o) => self.log(format!("Google push {name}: {o:?}")),
                Err(e) => self.log(format!("Google push {name} refused: {e}")),
            }
        }
        true
    }

    /// One message of the outbound queue (a follow-up), as its worker handles it: acked when
    /// every calendar it names was written, else offered again later. Answers whether it
    /// was written.
    async fn deliver_follow_up(&mut self, index: Option<usize>) -> bool {
        let n = self.oqueue.len();
        if n == 0 {
            return false;
        }
        let i = index.unwrap_or_else(|| self.rng.gen_range(0..n));
        let Some(body) = self.oqueue.remove(i) else {
            return false;
        };
        let session = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["follow_up"]["session_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        match voyage_fn_exchange_outbound::worker::handle(&self.deps, &body).await {
            Ok(()) => {
                self.log(format!("follow-up of {session}: written"));
                true
            }
            Err(e) => {
                self.log(format!(
                    "follow-up of {session}: not written ({e}), offered again"
                ));
                self.oqueue.push(body);
                false
            }
        }
    }

    /// One message of the google-sync queue, as its worker handles it.
    async fn run_google_round(&mut self, index: Option<usize>) -> bool {
        let n = self.gqueue.len();
        if n == 0 {
            return false;
        }
        let i = index.unwrap_or_else(|| self.rng.gen_range(0..n));
        let Some(body) = self.gqueue.remove(i) else {
            return false;
        };
        // A push's sync runs when its coalescing window has ended (the queue's delay).
        self.clock.advance(Duration::seconds(
            voyage_core::google::push::COALESCE_SECONDS + 1,
        ));
        let envelope: Envelope = serde_json::from_str(&body).expect("an envelope");
        let req: voyage_core::google::push::SyncRequest =
            serde_json::from_value(envelope.payload).expect("a google sync request");
        let mut conn = match self
            .deps
            .store
            .get_connection(&req.company_id, &req.connection_id)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.log(format!("google round failed: {e}"));
                self.gqueue.push(body);
                return true;
            }
        };
        match voyage_core::google::sync::sync_connection(&self.deps, &mut conn).await {
            Ok(r) => self.log(format!(
                "google round: {} events, {} commands, {} calendar writes{}{}{}{}",
                r.events,
                r.commands,
                r.calendar_writes,
                if r.full || r.resynced { ", full" } else { "" },
                if r.coalesced { ", coalesced" } else { "" },
                if r.continues { ", continues" } else { "" },
                r.skipped
                    .as_deref()
                    .map(|s| format!(", skipped: {s}"))
                    .unwrap_or_default(),
            )),
            Err(e) => {
                self.log(format!("google round failed: {e}"));
                // Not acked: the queue offers it again.
                self.gqueue.push(body);
            }
        }
        true
    }

    async fn deliver_push(&mut self, all: bool) -> bool {
        self.collect_pushes();
        if self.pushes.is_empty() {
            return false;
        }
        let batch: Vec<CapturedNotification> = if all {
            self.pushes.drain(..).collect()
        } else {
            let i = self.rng.gen_range(0..self.pushes.len());
            let p = self.pushes.remove(i);
            match self.rng.gen_range(0..10) {
                // Lost.
                0 => {
                    self.log("a Graph push is lost".into());
                    return true;
                }
                // Delivered twice.
                1 => {
                    self.pushes.push(p.clone());
                    vec![p]
                }
                _ => vec![p],
            }
        };
        for p in batch {
            let body = p.body.to_string();
            if let Err(e) = push::accept(&self.deps, body.as_bytes()).await {
                self.log(format!("push refused: {e}"));
            }
        }
        true
    }

    async fn run_round(&mut self, index: Option<usize>) -> bool {
        let n = self.queue.len();
        if n == 0 {
            return false;
        }
        let i = index.unwrap_or_else(|| self.rng.gen_range(0..n));
        let Some(body) = self.queue.remove(i) else {
            return false;
        };
        let envelope: Envelope = serde_json::from_str(&body).expect("an envelope");
        let req: SyncRequest = serde_json::from_value(envelope.payload).expect("a sync request");
        self.sim.clear_served();
        let result = sync::handle(&self.deps, &req).await;
        if std::env::var("VOYAGE_SIM_TRACE_GRAPH").is_ok() {
            for s in self.sim.served() {
                self.trace
                    .push(format!("      graph: {} {} {}", s.method, s.path, s.status));
            }
        }
        match &result {
            Ok(r) => {
                self.log(format!(
                "round ({}): {} events, {} commands, {} confirmations, {} calendar writes{}{}{}",
                req.reason,
                r.events,
                r.commands,
                r.confirmations,
                r.calendar_writes,
                if r.resynced { ", full" } else { "" },
                if r.resumed { ", resumed" } else { "" },
                if r.checkpoints > 0 { ", checkpointed" } else { "" }
            ))
            }
            Err(e) => {
                self.log(format!("round ({}) failed: {e}", req.reason));
                // Not acked: the queue offers it again.
                self.queue.push(body);
            }
        }
        true
    }

    /// Queues a round for the connection as a lost-notification backstop would.
    async fn backstop_round(&mut self) {
        let conns = self
            .deps
            .store
            .all_connections(voyage_core::model::Provider::Exchange, None)
            .await
            .expect("connections");
        for c in conns.items {
            let req = SyncRequest::for_connection(&c, "missed");
            push::enqueue(&self.deps, &req).await.expect("enqueue");
        }
    }

    // --- jobs, faults, time, restarts ---------------------------------------------------

    async fn run_job(&mut self, which: u32) {
        let report = match which {
            0 => sync::commit_pending_cancellations(&self.deps).await,
            1 => voyage_core::booking::relay_outboxes(&self.deps).await,
            2 => sync::rebase_sync_windows(&self.deps).await,
            _ => voyage_core::google::sync::sync_all(&self.deps).await,
        };
        match report {
            Ok(r) => self.log(format!(
                "job {}: {} processed, {} failed",
                r.job, r.processed, r.failed
            )),
            Err(e) => self.log(format!("job failed: {e}")),
        }
    }

    async fn inject_fault(&mut self) {
        if self.google_drawn() {
            self.inject_google_fault().await;
            return;
        }
        match self.rng.gen_range(0..5) {
            0 => {
                let status = if self.rng.gen_bool(0.5) { 429 } else { 503 };
                let count = self.rng.gen_range(1..3);
                self.sim.add_fault(Fault {
                    method: None,
                    path_contains: Some("/v1.0/".into()),
                    status: Some(status),
                    retry_after: None,
                    latency_ms: None,
                    count,
                    after: self.rng.gen_range(0..3),
                    lose_answer: false,
                });
                self.log(format!("fault: Graph answers {status} x{count}"));
            }
            1 => {
                self.graph.lose_next.store(1, Ordering::SeqCst);
                self.log("fault: the next Graph write's answer is lost".into());
            }
            2 => {
                let kind = match self.rng.gen_range(0..3) {
                    0 => WriteKind::Any,
                    1 => WriteKind::MappingWrite,
                    _ => WriteKind::SessionPut,
                };
                self.table.fail_next(Some(kind));
                self.log(format!("fault: the next store write ({kind:?}) fails"));
            }
            3 => {
                // Up to five refusals: past the three immediate retries, the relay's turn.
                let n = self.rng.gen_range(1..6);
                self.bus.refuse_next(n);
                self.log(format!("fault: the bus refuses {n} publishes"));
            }
            4 if self.rng.gen_bool(0.3) => {
                // Graph forgets every delta token: the next round answers 410.
                let url = format!("{}/_control/delta/expire", self.sim_url);
                let ok = reqwest::Client::new()
                    .post(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                self.log(format!("fault: delta tokens expire (410), done: {ok}"));
            }
            _ => {
                self.sim.add_fault(Fault {
                    method: Some("GET".into()),
                    path_contains: Some("delta".into()),
                    status: Some(503),
                    retry_after: None,
                    latency_ms: None,
                    count: 1,
                    after: 0,
                    lose_answer: false,
                });
                self.log("fault: the next delta page answers 503".into());
            }
        }
    }

    /// A fault on the Google side, or one of the store or the bus.
    async fn inject_google_fault(&mut self) {
        match self.rng.gen_range(0..6) {
            0 => {
                let status = if self.rng.gen_bool(0.5) { 429 } else { 503 };
                let count = self.rng.gen_range(1..3);
                let method = ["POST", "PUT", "DELETE", "GET"][self.rng.gen_range(0..4)];
                self.gsim.add_fault(Fault {
                    method: Some(method.into()),
                    path_contains: Some("/calendar/v3/".into()),
                    status: Some(status),
                    retry_after: None,
                    latency_ms: None,
                    count,
                    after: self.rng.gen_range(0..3),
                    lose_answer: false,
                });
                self.log(format!(
                    "fault: Google answers {status} x{count} to {method}"
                ));
            }
            1 => {
                self.google.lose_next.store(1, Ordering::SeqCst);
                self.log("fault: the next Google write's answer is lost".into());
            }
            2 => {
                let kind = match self.rng.gen_range(0..3) {
                    0 => WriteKind::Any,
                    1 => WriteKind::MappingWrite,
                    _ => WriteKind::SessionPut,
                };
                self.table.fail_next(Some(kind));
                self.log(format!("fault: the next store write ({kind:?}) fails"));
            }
            3 => {
                let n = self.rng.gen_range(1..6);
                self.bus.refuse_next(n);
                self.log(format!("fault: the bus refuses {n} publishes"));
            }
            4 if self.rng.gen_bool(0.3) => {
                // Google forgets every sync token: the next sync answers 410.
                let url = format!("{}/_control/sync-tokens/expire", self.gsim_url);
                let ok = reqwest::Client::new()
                    .post(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                self.log(format!(
                    "fault: Google sync tokens expire (410), done: {ok}"
                ));
            }
            _ => {
                self.gsim.add_fault(Fault {
                    method: Some("GET".into()),
                    path_contains: Some("/events".into()),
                    status: Some(503),
                    retry_after: None,
                    latency_ms: None,
                    count: 1,
                    after: 0,
                    lose_answer: false,
                });
                self.log("fault: the next Google read answers 503".into());
            }
        }
    }

    async fn clear_faults(&mut self) {
        if self.any_google() {
            let url = format!("{}/_control/faults", self.gsim_url);
            let ok = reqwest::Client::new()
                .delete(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            assert!(ok, "Google's faults cleared");
            self.google.lose_next.store(0, Ordering::SeqCst);
        }
        self.sim.clear_faults();
        self.graph.lose_next.store(0, Ordering::SeqCst);
        self.table.fail_next(None);
        self.bus.refuse_next(0);
    }

    fn restart(&mut self) {
        let urls = Urls {
            graph: &self.sim_url,
            google: &self.gsim_url,
            push_sink: &self.push_sink,
        };
        let queues = Queues {
            inbound: &self.queue,
            google: &self.gqueue,
            outbound: &self.oqueue,
        };
        let (deps, graph, google) = build(
            &urls,
            self.variant,
            self.any_google(),
            &self.clock,
            &self.table,
            &self.bus,
            &queues,
        );
        self.deps = deps;
        self.graph = graph;
        self.google = google;
        self.log("restart".into());
    }

    /// The platform reads the webhooks: a booking cancelled or moved on the staff member's
    /// side is cancelled or moved in the platform's model too.
    fn platform_reads_webhooks(&mut self) {
        let events = self.bus.events();
        for e in &events[self.bus_seen..] {
            let session = e.detail["payload"]["session_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if e.detail_type == "session.cancelled" {
                if let Some(p) = self.platform.get_mut(&session) {
                    p.closed = true;
                }
            }
        }
        self.bus_seen = events.len();
    }

    /// One random step.
    async fn step(&mut self) {
        self.platform_reads_webhooks();
        self.collect_google_pushes();
        match self.rng.gen_range(0..100) {
            0..=17 => self.platform_acts(),
            18..=29 => {
                // A queued follow-up competes with the platform's changes (no draw while
                // none waits, so a history without follow-ups is what it always was).
                if !self.oqueue.is_empty() && self.rng.gen_bool(0.5) {
                    self.deliver_follow_up(None).await;
                } else {
                    self.deliver_platform(None).await;
                }
            }
            30..=44 => self.staff_acts().await,
            45..=59 => {
                if self.google_drawn() {
                    self.deliver_google_push(false).await;
                } else {
                    self.deliver_push(false).await;
                }
            }
            60..=74 => {
                if self.rounds_held && self.rng.gen_bool(0.5) {
                    self.interleave_round().await;
                } else {
                    self.round_of_some_calendar().await;
                }
            }
            75..=77 => self.inject_fault().await,
            78..=79 => {
                if self.rounds_held && self.rng.gen_bool(0.5) {
                    self.interleave_round().await;
                } else {
                    self.interleave().await;
                }
            }
            80..=84 => {
                // With Google: its five-minute job too (a sync without a push).
                let jobs = if self.any_google() { 4 } else { 3 };
                let which = self.rng.gen_range(0..jobs);
                self.run_job(which).await;
            }
            85..=93 => {
                let minutes = self.rng.gen_range(1..8);
                self.clock.advance(Duration::minutes(minutes));
                self.log(format!("clock +{minutes}m"));
            }
            94..=95 => {
                self.clock.advance(Duration::hours(25));
                self.log("clock +25h".into());
            }
            _ => self.restart(),
        }
    }

    /// Faults cleared, everything delivered and handled until nothing moves, the grace
    /// passed for every pending cancellation, a backstop round run.
    async fn settle(&mut self) {
        self.clear_faults().await;
        let mut backstops = 0;
        for _ in 0..40 {
            self.platform_reads_webhooks();
            let mut moved = false;
            while !self.outbox.is_empty() {
                moved |= self.deliver_platform(Some(0)).await;
                if self.outbox.len() > 50 {
                    break;
                }
            }
            moved |= self.deliver_push(true).await;
            while !self.queue.is_empty() {
                moved |= self.run_round(Some(0)).await;
            }
            // Follow-ups: each once per pass (one that fails is offered again next pass).
            for _ in 0..self.oqueue.len() {
                moved |= self.deliver_follow_up(Some(0)).await;
            }
            if self.any_gconn() {
                moved |= self.deliver_google_push(true).await;
                // Bounded: a round that keeps failing is the checks' to report.
                for _ in 0..20 {
                    if !self.run_google_round(Some(0)).await {
                        break;
                    }
                    moved = true;
                }
            }
            self.collect_pushes();
            if moved || !self.pushes.is_empty() || !self.gpushes.is_empty() {
                continue;
            }
            let pending = self.pending_sessions().await;
            if pending > 0 {
                self.clock.advance(Duration::minutes(GRACE_MINUTES + 1));
                self.log("settle: clock past the grace".into());
                self.run_job(0).await;
                continue;
            }
            if backstops < 2 {
                backstops += 1;
                if backstops == 2 {
                    self.clock.advance(Duration::hours(25));
                    self.log("settle: clock +25h (the window re-bases)".into());
                }
                self.backstop_round().await;
                if self.any_gconn() {
                    self.run_job(3).await;
                }
                continue;
            }
            self.run_job(1).await;
            break;
        }
    }

    async fn pending_sessions(&self) -> usize {
        let ids: Vec<String> = self.platform.keys().cloned().collect();
        self.deps
            .store
            .get_sessions(COMPANY, &ids)
            .await
            .expect("sessions")
            .values()
            .filter(|s| s.status == SessionStatus::PendingCancellation)
            .count()
    }

    /// The invariants over the settled state; each failure as a sentence.
    async fn check(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if std::env::var("VOYAGE_SIM_DEBUG").is_ok() {
            for id in self.platform.keys() {
                for provider in [
                    voyage_core::model::Provider::Exchange,
                    voyage_core::model::Provider::Google,
                ] {
                    let m = self
                        .deps
                        .store
                        .mapping_for_session(COMPANY, provider, id)
                        .await;
                    println!("DEBUG {id}: {provider:?} mapping {m:?}");
                }
                let s = self.deps.store.find_session(COMPANY, id).await;
                println!("DEBUG {id}: session {s:?}");
            }
            for m in &self.members {
                let whose = match self.mode {
                    Mode::OneStaff => String::new(),
                    Mode::TwoStaff => format!(" ({})", m.staff),
                };
                for e in self.sim.events_of(m.email) {
                    println!("DEBUG event{whose} {e:?}");
                }
                for e in self.gsim.events_of(m.email) {
                    println!("DEBUG google event{whose} {e:?}");
                }
            }
        }
        let ids: Vec<String> = self.platform.keys().cloned().collect();
        let sessions = self
            .deps
            .store
            .get_sessions(COMPANY, &ids)
            .await
            .expect("sessions");
        // Each connected calendar's live events of the platform: (whose, which, (session,
        // start, end)).
        let mut calendars: Vec<(usize, Cal, Vec<LiveEvent>)> = Vec::new();
        for m in 0..self.members.len() {
            if self.members[m].exchange() {
                let live = self
                    .tagged_events(m)
                    .iter()
                    .filter(|e| !e.deleted && !e.is_cancelled)
                    .map(|e| (Self::session_of(e), e.start, e.end))
                    .collect();
                calendars.push((m, Cal::Exchange, live));
            }
            if !self.members[m].google() {
                continue;
            }
            let live = self
                .google_tagged_events(m)
                .iter()
                .filter(|e| e.status != "cancelled")
                .map(|e| {
                    (
                        Self::google_session_of(e),
                        e.start.unwrap_or_default(),
                        e.end.unwrap_or_default(),
                    )
                })
                .collect();
            calendars.push((m, Cal::Google, live));
        }
        // Webhook events, once per idempotency key (the dispatcher delivers each key once).
        let mut published: BTreeMap<String, BusEvent> = BTreeMap::new();
        for e in self.bus.events() {
            let key = e.detail["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            published.entry(key).or_insert(e);
        }
        // Every follow-up was written (settling offers each again until it is).
        if !self.oqueue.is_empty() {
            bad.push(format!(
                "{} follow-up(s) still queued after settling",
                self.oqueue.len()
            ));
        }
        // Every session the platform made reached the store (everything was delivered).
        for id in self.platform.keys() {
            if !sessions.contains_key(id) {
                bad.push(format!("{id} was sent by the platform but is not stored"));
            }
        }
        // Sessions that ended before the sync window are history: their events are no longer
        // reconciled (a documented rule), so only their webhooks are checked.
        let history_before = self.clock.now() - Duration::days(sync::WINDOW_PAST_DAYS);
        // No window reaches past this: what starts later is seen when the window gets there.
        let window_end =
            self.clock.now() + Duration::days(voyage_core::calendar::WINDOW_FUTURE_DAYS);
        for s in sessions.values() {
            let past = s.end <= history_before;
            let cancelled_hooks = published
                .values()
                .filter(|e| {
                    e.detail_type == "session.cancelled"
                        && e.detail["payload"]["session_id"] == json!(s.id)
                })
                .count();
            // The staff member the session is assigned to (in the store); in two-staff mode it
            // must be whom the platform gave it to last (every change was delivered).
            let owner = self.members.iter().position(|m| m.staff == s.staff_id);
            if self.mode == Mode::TwoStaff {
                let given = self
                    .platform
                    .get(&s.id)
                    .map(|p| self.members[p.staff].staff);
                if given.is_some_and(|g| g != s.staff_id) {
                    bad.push(format!(
                        "{} is {}'s in the store, but the platform gave it to {}",
                        s.id,
                        s.staff_id,
                        given.unwrap_or_default()
                    ));
                }
            }
            for (m, cal, events) in &calendars {
                // Exchange's sentences as they always were; Google's name the calendar (and
                // with two staff members, whose it is).
                let what = match (self.mode, cal) {
                    (Mode::OneStaff, Cal::Exchange) => String::new(),
                    (Mode::OneStaff, Cal::Google) => " Google".to_string(),
                    (Mode::TwoStaff, Cal::Exchange) => format!(" {}'s", self.members[*m].staff),
                    (Mode::TwoStaff, Cal::Google) => {
                        format!(" {}'s Google", self.members[*m].staff)
                    }
                };
                let live: Vec<_> = events.iter().filter(|(id, _, _)| *id == s.id).collect();
                if owner != Some(*m) {
                    // Another staff member's calendar: no live event of the session, whatever
                    // its status (a move deletes the old calendar's event), but for one this
                    // staff member restored or moved there that lies outside the window, out
                    // of the sync's sight (as below).
                    let touched = self.staff_log.get(&s.id).is_some_and(|log| {
                        log.iter().any(|e| {
                            e.member == *m
                                && e.cal == *cal
                                && matches!(e.act, StaffAct::Restore | StaffAct::Move)
                        })
                    });
                    let live: Vec<_> = live
                        .iter()
                        .filter(|(_, start, end)| {
                            !touched || (*end > history_before && *start < window_end)
                        })
                        .collect();
                    if !live.is_empty() && !past && s.status != SessionStatus::PendingCancellation {
                        bad.push(format!(
                            "{} is {}'s ({:?}) but has {} live event(s) in{what} calendar",
                            s.id,
                            s.staff_id,
                            s.status,
                            live.len()
                        ));
                    }
                    continue;
                }
                match s.status {
                    SessionStatus::Cancelled => {
                        // An event the staff member restored in this calendar that lies
                        // outside the window is out of the sync's sight, whatever its
                        // session's time: ended before it, history (a cancelled session's old
                        // event brought back days in the past, seed 715511); beyond it,
                        // deleted again once the window reaches it (restored and moved 200
                        // days ahead after its last sighting, seed 750328: nothing reports an
                        // event that was already removed and comes back outside the window).
                        let restored = self.staff_log.get(&s.id).is_some_and(|log| {
                            log.iter().any(|e| {
                                e.member == *m && e.cal == *cal && e.act == StaffAct::Restore
                            })
                        });
                        let live: Vec<_> = live
                            .iter()
                            .filter(|(_, start, end)| {
                                !restored || (*end > history_before && *start < window_end)
                            })
                            .collect();
                        if !live.is_empty() && !past {
                            bad.push(format!(
                                "{} is cancelled but has {} live{what} event(s)",
                                s.id,
                                live.len()
                            ));
                        }
                    }
                    SessionStatus::Confirmed if past => {}
                    SessionStatus::Confirmed => {
                        if live.len() != 1 {
                            bad.push(format!(
                                "{} is confirmed with {} live{what} events (want exactly one)",
                                s.id,
                                live.len()
                            ));
                        }
                        for (_, start, end) in &live {
                            if (*start, *end) != (s.start, s.end) {
                                bad.push(format!(
                                    "{} is booked {}..{} but its{what} event shows {}..{}",
                                    s.id, s.start, s.end, start, end
                                ));
                            }
                        }
                    }
                    SessionStatus::PendingCancellation => {}
                }
            }
            match s.status {
                SessionStatus::Cancelled => {
                    let platform_cancelled = self
                        .platform
                        .get(&s.id)
                        .is_some_and(|p| p.cancelled_by_platform);
                    if !platform_cancelled && !self.really_deleted(&s.id) {
                        bad.push(format!(
                            "{} is cancelled, but the platform did not cancel it and every deletion of its events was undone within the grace",
                            s.id
                        ));
                    }
                }
                SessionStatus::PendingCancellation => {
                    bad.push(format!("{} is still pending after settling", s.id));
                }
                SessionStatus::Confirmed => {}
            }
            if s.status == SessionStatus::Confirmed && cancelled_hooks > 0 {
                bad.push(format!(
                    "{} ends confirmed but session.cancelled was sent",
                    s.id
                ));
            }
            // Never an echo: a reschedule reported from a calendar comes from a staff
            // member's move of one of the session's events (the system's own writes read
            // back, even one whose commit was lost, are no move: review 8, finding 4).
            let moved_in_a_calendar = published.values().any(|e| {
                e.detail_type == "session.rescheduled"
                    && e.detail["payload"]["session_id"] == json!(s.id)
                    && e.detail["payload"]["origin"]
                        .as_str()
                        .is_some_and(|o| o.ends_with("-inbound"))
            });
            let staff_moved = self
                .staff_log
                .get(&s.id)
                .is_some_and(|log| log.iter().any(|e| e.act == StaffAct::Move));
            // Nor a decline: the flag, and `session.declined`, come from a staff member's
            // decline of one of the session's events.
            let declined_hook = published.values().any(|e| {
                e.detail_type == "session.declined"
                    && e.detail["payload"]["session_id"] == json!(s.id)
            });
            let staff_declined = self
                .staff_log
                .get(&s.id)
                .is_some_and(|log| log.iter().any(|e| e.act == StaffAct::Decline));
            if (s.declined || declined_hook) && !staff_declined {
                bad.push(format!(
                    "{} is flagged declined, but no staff member declined any of its events",
                    s.id
                ));
            }
            if moved_in_a_calendar && !staff_moved {
                bad.push(format!(
                    "{} got session.rescheduled from a calendar, but no staff member moved any of its events",
                    s.id
                ));
            }
            if cancelled_hooks > 1 {
                bad.push(format!(
                    "{} got session.cancelled {cancelled_hooks} times",
                    s.id
                ));
            }
            if !s.outbox.is_empty() {
                bad.push(format!("{} still has unpublished events", s.id));
            }
        }
        bad
    }

    /// Whether some deletion of one of the session's events (in any calendar), by a staff
    /// member the session was assigned to then, was not undone, in that calendar, within the
    /// grace. (A deletion in the calendar of a staff member the session had been moved away
    /// from is none: the system deletes that event itself.)
    fn really_deleted(&self, session: &str) -> bool {
        let Some(log) = self.staff_log.get(session) else {
            return false;
        };
        let grace = Duration::minutes(GRACE_MINUTES);
        log.iter().enumerate().any(|(i, d)| {
            d.act == StaffAct::Delete
                && d.owner
                && !log[i + 1..].iter().any(|r| {
                    r.act == StaffAct::Restore
                        && r.member == d.member
                        && r.cal == d.cal
                        && r.at < d.at + grace
                })
        })
    }
}

/// Writes one platform change: through the calendar seam (every calendar of the staff
/// member, as `POST /v1/sessions/changes`) when Google is connected, else the Exchange route.
/// Returns what it did (for the trace) and whether the platform must send it again (an
/// error, or a calendar that could not be written).
async fn write_change(deps: &Deps, change: &outbound::SessionChange, seam: bool) -> (String, bool) {
    if !seam {
        return match outbound::apply(deps, change).await {
            Ok(o) => (format!("{} ({:?})", o.outcome, o.session_status), false),
            Err(e) => (format!("error {e}"), true),
        };
    }
    match voyage_core::calendar::changes::apply(deps, change).await {
        Ok(o) => {
            let calendars: Vec<String> = o
                .calendars
                .iter()
                .map(|c| {
                    let reason = match (c.outcome, &c.reason) {
                        ("failed", Some(r)) => format!(" [{r}]"),
                        _ => String::new(),
                    };
                    format!("{} {}{reason}", c.provider.as_str(), c.outcome)
                })
                .collect();
            (
                format!("{} ({:?})", calendars.join(", "), o.session_status),
                o.any_failed(),
            )
        }
        Err(e) => (format!("error {e}"), true),
    }
}

/// The durable queues a restart keeps.
struct Queues<'a> {
    inbound: &'a Arc<ListQueue>,
    google: &'a Arc<ListQueue>,
    outbound: &'a Arc<ListQueue>,
}

fn build(
    urls: &Urls,
    variant: Variant,
    google: bool,
    clock: &Arc<ManualClock>,
    table: &Arc<FaultyTable>,
    bus: &Arc<RecordingBus>,
    queues: &Queues,
) -> (Arc<Deps>, Arc<LossyGraph>, Arc<LossyGoogle>) {
    let sim_url = urls.graph;
    let config = config(urls, variant, google);
    let store = Store::new(table.clone(), clock.clone());
    let http = GraphHttp::with_budget(
        sim_url,
        sim_url,
        RetryBudget {
            attempts: 1,
            max_wait: StdDuration::ZERO,
            timeout: StdDuration::from_secs(10),
        },
    )
    .expect("graph client");
    let limited = voyage_core::throttle::BudgetedGraph::new(
        Arc::new(http),
        Arc::new(voyage_core::throttle::Budget::new(
            store.clone(),
            config.limits.chunk,
        )),
        config.limits.graph,
    );
    let gate: GateSlot = Arc::new(Mutex::new(None));
    let graph = Arc::new(LossyGraph {
        inner: Arc::new(limited),
        lose_next: AtomicU32::new(0),
        gate: gate.clone(),
    });
    // Google's client: no retries and no waits (a fault is the simulation's to repeat).
    let google_http = voyage_providers::google::GoogleHttp::with_backoff(
        &config.google_calendar_base_url,
        &config.google_token_url,
        voyage_providers::google::Backoff {
            attempts: 1,
            base: StdDuration::ZERO,
            max_wait: StdDuration::ZERO,
            timeout: StdDuration::from_secs(10),
        },
    )
    .expect("google client");
    let google_limited = voyage_core::throttle::BudgetedGoogle::new(
        Arc::new(google_http),
        Arc::new(voyage_core::throttle::Budget::new(
            store.clone(),
            config.limits.chunk,
        )),
        config.limits.google,
    );
    let google = Arc::new(LossyGoogle {
        inner: Arc::new(google_limited),
        lose_next: AtomicU32::new(0),
        gate,
    });
    let mut deps = Deps::new(store, config)
        .with_bus(bus.clone())
        .with_queue(QueueName::ExchangeInbound, queues.inbound.clone())
        .with_queue(QueueName::GoogleSync, queues.google.clone())
        .with_queue(QueueName::ExchangeOutbound, queues.outbound.clone());
    deps.graph = Some(graph.clone());
    deps.google = Some(google.clone());
    (Arc::new(deps), graph, google)
}

/// Runs one history of `steps` steps on `seed` and checks the invariants (one staff member:
/// [`Mode::OneStaff`]).
pub async fn run(seed: u64, steps: usize) -> Outcome {
    run_with(seed, steps, Mode::OneStaff).await
}

/// Runs one history of `steps` steps on `seed` in `mode` and checks the invariants.
pub async fn run_with(seed: u64, steps: usize, mode: Mode) -> Outcome {
    run_held(seed, steps, mode, false).await
}

/// [`run_with`], with `rounds_held`: interleavings also hold a sync round or the sweep at
/// its first calendar write while another actor runs ([`World::interleave_round`]). Another
/// history than [`run_with`]'s for the same seed.
pub async fn run_held(seed: u64, steps: usize, mode: Mode, rounds_held: bool) -> Outcome {
    let mut w = World::new(seed, mode).await;
    w.rounds_held = rounds_held;
    for _ in 0..steps {
        w.step().await;
    }
    w.log("--- settle".into());
    w.settle().await;
    let violations = w.check().await;
    Outcome {
        seed: w.seed,
        steps,
        trace: w.trace,
        violations,
    }
}
