//! The testing kit: an isolated runtime per test, an object's alarm run now,
//! an instance and its storage reached inside a turn, the ids of a
//! namespace.
//!
//! | you want | call | Cloudflare's vitest pool |
//! | --- | --- | --- |
//! | a fresh runtime for one test, storage in memory | [`runtime()`]`.host::<T>().build().await?` | isolated storage |
//! | to run an object's alarm now, without sleeping | [`run_alarm`]`(&stub).await?` | `runDurableObjectAlarm(stub)` |
//! | to reach the instance and its storage in a turn | [`with_instance`]`(&stub, \|obj, ctx\| ..).await?` | `runInDurableObject(stub, fn)` |
//! | the objects of a type | [`list_ids`]`(&namespace)?` | `listDurableObjectIds(ns)` |
//!
//! A test runtime is a normal runtime (stubs, turns, the output gate,
//! eviction all behave as in production) with two differences: its storage
//! lives in memory and goes with it, and its alarms come due only when the
//! test says so, with [`run_alarm`]. So a test of an alarm neither sleeps
//! nor races the scheduler. [`run_alarm`] and [`with_instance`] queue their
//! turn in the object's mailbox when they are called, like a stub method:
//! in order with the calls issued before and after them. The kit needs no
//! cargo feature.
//!
//! # A complete test
//!
//! A reminder object that sets an alarm an hour ahead and counts how often
//! it fired; the test runs the alarm at once, looks at the instance and its
//! storage, and lists the namespace.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use stead::{durable_object, testing, AlarmInfo, Context};
//!
//! pub struct Reminder { ctx: Context, fired: u32 }
//!
//! #[durable_object]
//! impl Reminder {
//!     pub async fn new(ctx: Context) -> Self {
//!         let fired = ctx.storage().get("fired").unwrap().unwrap_or(0);
//!         Reminder { ctx, fired }
//!     }
//!
//!     pub fn remind_in(&mut self, secs: u64) -> stead::Result<()> {
//!         self.ctx.storage().set_alarm(SystemTime::now() + Duration::from_secs(secs))
//!     }
//!
//!     #[alarm]
//!     async fn alarm(&mut self, _info: AlarmInfo) {
//!         self.fired += 1;
//!         self.ctx.storage().put("fired", &self.fired).unwrap();
//!     }
//! }
//!
//! # fn main() -> stead::Result<()> { tokio::runtime::Runtime::new().unwrap().block_on(test()) }
//! // #[tokio::test]
//! async fn an_hour_later_the_reminder_has_fired() -> stead::Result<()> {
//!     let rt = testing::runtime().host::<Reminder>().build().await?;
//!     let reminders = rt.namespace::<Reminder>();
//!     let stub = reminders.stub(&reminders.id_from_name("dentist"));
//!
//!     stub.remind_in(3600).await??;
//!     assert!(testing::run_alarm(&stub).await?, "an alarm was set, and it ran");
//!     assert!(!testing::run_alarm(&stub).await?, "it is not set any more");
//!
//!     // Inside a turn of the object: its fields, and its storage.
//!     let (fired, stored) = testing::with_instance(&stub, |reminder, ctx| {
//!         (reminder.fired, ctx.storage().get::<u32>("fired"))
//!     })
//!     .await?;
//!     assert_eq!((fired, stored?), (1, Some(1)));
//!
//!     let listed = testing::list_ids(&reminders)?;
//!     assert_eq!(listed.len(), 1);
//!     assert_eq!(listed[0].name.as_deref(), Some("dentist"));
//!     rt.shutdown().await
//! }
//! # async fn test() -> stead::Result<()> { an_hour_later_the_reminder_has_fired().await }
//! ```
//!
//! A failing alarm handler is retried as in production (its writes rolled
//! back, the alarm kept, [`AlarmInfo`](crate::AlarmInfo)`::retry_count` one
//! more); in a test runtime each retry waits for the next [`run_alarm`],
//! which reports the failure as an error saying so.

pub use stead_runtime::testing::*;
