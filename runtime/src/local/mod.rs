//! One process's objects: the hosted types and their activations, the
//! mailbox, who runs turns, the watchdog, eviction and the alarm scheduler.
//!
//! | file | what |
//! | --- | --- |
//! | `objects.rs` | this process's objects: every hosted type |
//! | `hosted.rs` | a hosted type and its table of activations |
//! | `activation.rs` | one object in memory: its turns and the output gate |
//! | `schedule.rs` | the scheduling state machine: who runs an object's turns |
//! | `drive.rs` | carrying it out: turns in the caller's poll, drain tasks |
//! | `mailbox.rs` | the bounded queue of messages, and the messages |
//! | `watchdog.rs` | runs calls whose callers never poll |
//! | `instance.rs` | a type-erased instance, what is known of its type, panics caught |
//! | `alarms.rs` | the alarm turn, retries, and the scheduler task |
//! | `eviction.rs` | idle objects leave memory |
//! | `visit.rs` | the turns of `stead::testing`: a closure on the instance, the alarm now |
//!
//! This layer takes a [`Host`] from above and uses storage below; it knows
//! nothing of the cluster or of the user-facing `Runtime`.

mod activation;
mod alarms;
mod drive;
mod eviction;
mod hosted;
mod instance;
mod mailbox;
mod objects;
mod schedule;
mod visit;
pub(crate) mod watchdog;

pub(crate) use activation::Activation;
pub(crate) use alarms::run_scheduler;
pub use alarms::{MAX_ALARM_RETRIES, MAX_ALARMS_IN_FLIGHT};
pub(crate) use drive::LocalReply;
pub(crate) use eviction::evict_idle_objects;
pub(crate) use hosted::HostedType;
pub use instance::{AlarmInfo, BoxFuture, DispatchError, Dispatched, MethodInfo};
pub(crate) use instance::{Constructor, ErasedObject, Instance};
pub(crate) use mailbox::{Call, Message, ReplySender};
pub(crate) use objects::Objects;
pub(crate) use schedule::Driver;
pub(crate) use visit::{Visit, VisitFn};
