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
//! change written twice, a round updating the mapped event's change key, the mapping in a
//! previous staff member's calendar that a move removes). A superseded write records
//! nothing. An event it made that is none of the session's is deleted when no twin write of
//! the same change can be about to map it: for Exchange, when its `transactionId` is no
//! longer the pending one; for Google, when its id (a placement's own) is neither mapped nor
//! pending. (Deleting more eagerly deleted a twin's event: the same move to another staff
//! member delivered twice.)

use crate::model::EventMapping;

/// The mapped event and the placement still to be created, of one calendar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub mapped: Option<String>,
    pub pending: Option<String>,
    /// A mapping through another connection (the session given to another staff member):
    /// the write removes it, it is not the write's placement.
    pub elsewhere: Option<String>,
    /// The staff member the session is given to: a write for one staff member is overtaken
    /// once the session is given to another (a move back recorded while a move was in
    /// flight), whatever the mapping says.
    pub staff: Option<String>,
}

impl Placement {
    pub fn of(
        mapping: Option<&EventMapping>,
        pending: Option<&str>,
        connection: Option<&str>,
        staff: Option<&str>,
    ) -> Placement {
        let here = |m: &&EventMapping| Some(m.connection_id.as_str()) == connection;
        Placement {
            mapped: mapping.filter(here).map(|m| m.external_event_id.clone()),
            pending: pending.map(str::to_string),
            elsewhere: mapping
                .filter(|m| !here(m))
                .map(|m| m.external_event_id.clone()),
            staff: staff.map(str::to_string),
        }
    }

    /// Whether `fresh` (read after a lost race) shows the session moved to another placement
    /// than this one (read when the step was decided), for a step that wrote or found
    /// `event`: another event is mapped now, the mapping this step saw was retired, or
    /// another placement is waiting to be created, or the session was given to another
    /// staff member. The same event mapped meanwhile is no move (the same change written
    /// twice).
    pub fn moved_on(&self, fresh: &Placement, event: Option<&str>) -> bool {
        // The mapping elsewhere this write saw (and removes) still there is no move.
        let now = fresh
            .mapped
            .as_ref()
            .or(fresh.elsewhere.as_ref())
            .filter(|m| Some(*m) != self.elsewhere.as_ref());
        let remapped = match now {
            Some(now) => Some(now) != self.mapped.as_ref() && Some(now.as_str()) != event,
            None => self.mapped.is_some(),
        };
        remapped
            || (fresh.pending.is_some() && fresh.pending != self.pending)
            || fresh.staff != self.staff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mapped: Option<&str>, pending: Option<&str>) -> Placement {
        Placement {
            mapped: mapped.map(str::to_string),
            pending: pending.map(str::to_string),
            elsewhere: None,
            staff: Some("ann".into()),
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
    fn the_mapping_elsewhere_a_move_to_another_staff_member_saw_is_no_move_gone_or_not() {
        let seen = Placement {
            elsewhere: Some("ann-event".into()),
            ..p(None, Some("t2"))
        };
        assert!(!seen.moved_on(&seen.clone(), Some("bob-event")));
        assert!(!seen.moved_on(&p(None, Some("t2")), Some("bob-event")));
        assert!(!seen.moved_on(&p(Some("bob-event"), None), Some("bob-event")));
    }

    #[test]
    fn the_session_given_to_another_staff_member_since_is_a_move() {
        let seen = p(None, Some("t2"));
        let fresh = Placement {
            staff: Some("bob".into()),
            ..p(None, Some("t2"))
        };
        assert!(seen.moved_on(&fresh, Some("e1")));
    }

    #[test]
    fn a_pending_id_cleared_by_a_twin_write_is_no_move() {
        assert!(!p(None, Some("t2")).moved_on(&p(None, None), Some("e1")));
    }
}
