//! A session's placement in one calendar, as a platform write saw it when it decided its step:
//! the event the session's mapping named, and the id of a placement still to be created (the
//! `transactionId` of an Exchange create, the client-chosen id of a Google insert), both
//! recorded by the write's intent.
//!
//! A write's closing commit that lost a race re-reads and builds its writes again. If another
//! writer has meanwhile moved the session to another placement (a cancellation and a
//! re-booking handled while this write's provider call was in flight), the write is
//! superseded: its mapping would point the session back at an event the newer placement
//! replaced, and clearing the pending id would make the newer placement's create
//! unfindable. [`Placement::moved_on`] tells that case from the harmless ones (the same
//! change written twice, a round updating the mapped event's change key).

use crate::model::EventMapping;

/// The mapped event and the placement still to be created, of one calendar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub mapped: Option<String>,
    pub pending: Option<String>,
}

impl Placement {
    pub fn of(mapping: Option<&EventMapping>, pending: Option<&str>) -> Placement {
        Placement {
            mapped: mapping.map(|m| m.external_event_id.clone()),
            pending: pending.map(str::to_string),
        }
    }

    /// Whether `fresh` (read after a lost race) shows the session moved to another placement
    /// than this one (read when the step was decided), for a step that wrote or found
    /// `event`: another event is mapped now, the mapping this step saw was retired, or
    /// another placement is waiting to be created. The same event mapped meanwhile is no
    /// move (the same change written twice).
    pub fn moved_on(&self, fresh: &Placement, event: Option<&str>) -> bool {
        let remapped = match &fresh.mapped {
            Some(now) => fresh.mapped != self.mapped && Some(now.as_str()) != event,
            None => self.mapped.is_some(),
        };
        remapped || (fresh.pending.is_some() && fresh.pending != self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mapped: Option<&str>, pending: Option<&str>) -> Placement {
        Placement {
            mapped: mapped.map(str::to_string),
            pending: pending.map(str::to_string),
        }
    }

    #[test]
    fn an_unchanged_placement_has_not_moved_on() {
        let seen = p(Some("e1"), None);
        assert!(!seen.moved_on(&seen.clone(), Some("e1")));
    }

    #[test]
    fn another_event_mapped_since_is_a_move() {
        assert!(p(Some("e1"), None).moved_on(&p(Some("e2"), None), Some("e1")));
    }

    #[test]
    fn the_same_event_mapped_by_a_twin_write_is_no_move() {
        assert!(!p(None, Some("t1")).moved_on(&p(Some("e1"), None), Some("e1")));
    }

    #[test]
    fn a_mapping_retired_since_is_a_move() {
        assert!(p(Some("e1"), None).moved_on(&p(None, Some("t4")), Some("e1")));
        assert!(p(Some("e1"), None).moved_on(&p(None, None), Some("e1")));
    }

    #[test]
    fn another_placement_waiting_to_be_created_is_a_move() {
        assert!(p(None, Some("t2")).moved_on(&p(None, Some("t4")), Some("e1")));
    }

    #[test]
    fn a_pending_id_cleared_by_a_twin_write_is_no_move() {
        assert!(!p(None, Some("t2")).moved_on(&p(None, None), Some("e1")));
    }
}
