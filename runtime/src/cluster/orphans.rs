//! A dead node's alarms, fired elsewhere.
//!
//! With replicated storage, an object's alarm is also kept in its row in
//! PostgreSQL (`stead_objects.alarm_at`, written with the turn that set or
//! deleted it). Every node polls, every quarter of the lease, for alarms
//! coming due of objects of its types whose owner's lease has lapsed; it
//! takes each such object over (the same claim a call would make, with
//! the next epoch) and puts its alarm in its own index, so that the alarm
//! fires here: the alarm's turn activates the object, which is restored
//! from the log first. Two nodes polling at once race in the claim, which
//! one wins; the loser's index entry finds, when it fires, that the object
//! is not its own, and is retried and dropped like any failing alarm.

use std::sync::Weak;

use super::placement::Cluster;
use crate::local::Objects;

/// Polls for and adopts a dead node's due alarms, until the runtime is
/// gone or shuts down. Does nothing unless this node replicates storage in
/// a PostgreSQL cluster.
pub(crate) async fn adopt_alarms(objects: Weak<Objects>, cluster: Weak<Cluster>) {
    let Some(period) = cluster.upgrade().and_then(|cluster| cluster.orphan_poll()) else { return };
    let ahead = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(period).await;
        let (Some(objects), Some(cluster)) = (objects.upgrade(), cluster.upgrade()) else { return };
        let host = objects.host().clone();
        if host.lifecycle().is_closing() {
            return;
        }
        if cluster.serving().is_err() {
            continue;
        }
        let types: Vec<String> = objects.type_names().map(str::to_string).collect();
        let index = &host.storage().alarms;
        let orphans = match cluster.orphaned_alarms(index.now().saturating_add(ahead), &types).await {
            Ok(orphans) => orphans,
            Err(err) => {
                tracing::debug!(%err, "could not look for a dead node's alarms");
                continue;
            }
        };
        for (type_name, id, at) in orphans {
            match cluster.adopt(&type_name, &id).await {
                Ok(true) => {
                    tracing::info!(r#type = type_name, object = %id, "took over an object of a dead node for its alarm");
                    if let Err(err) = index.ensure(&type_name, &id, at) {
                        tracing::warn!(%err, r#type = type_name, object = %id, "could not index an adopted alarm");
                    }
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::debug!(%err, r#type = type_name, object = %id, "could not adopt an alarm")
                }
            }
        }
    }
}
