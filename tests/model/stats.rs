//! What the runs did, so that a quiet pass can be told from a vacuous one.

use leases::CancelReason;

use crate::world::World;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) cases: usize,
    pub(crate) steps: usize,
    pub(crate) grants: usize,
    pub(crate) conflicts: usize,
    pub(crate) gave_up: usize,
    pub(crate) ended: std::collections::BTreeMap<String, usize>,
}

pub(crate) static STATS: std::sync::Mutex<Option<Stats>> = std::sync::Mutex::new(None);

pub(crate) fn record(world: &World, ops: usize) {
    let mut guard = STATS.lock().unwrap();
    let stats = guard.get_or_insert_with(Stats::default);
    stats.cases += 1;
    stats.steps += ops;
    stats.grants += world.handles.len();
    stats.conflicts += world.conflicts;
    stats.gave_up += world.gave_up;
    for h in &world.handles {
        let name = match h.ctx.reason() {
            Some(CancelReason::Lost(c)) => {
                format!("Lost({})", format!("{c:?}").split('(').next().unwrap_or(""))
            }
            Some(r) => format!("{r:?}"),
            None => "live".into(),
        };
        *stats.ended.entry(name).or_default() += 1;
    }
}
