//! Who a presence event names: the session and, for an authenticated
//! connection, its user (a token's `sub`, or the connect hook's). Through a
//! shared broker the two travel as one member name, `<session>@<user>` (a
//! session id never contains `@`), split again where presence is shown.

use crate::hub::Hub;
use crate::queue::ConnShared;
use std::sync::Arc;

/// `session`, or `session@user` (control characters dropped from the
/// user: member names travel in line-based broker events).
pub(crate) fn member(session: String, user: Option<&str>) -> String {
    match user {
        None => session,
        Some(u) => {
            let mut m = session;
            m.push('@');
            m.extend(u.chars().filter(|c| !c.is_control()));
            m
        }
    }
}

/// A member name as `(session, user)`.
pub fn split_member(member: &str) -> (&str, Option<&str>) {
    match member.split_once('@') {
        Some((session, user)) => (session, Some(user)),
        None => (member, None),
    }
}

impl Hub {
    /// The user connection `conn` is authenticated as, if any.
    pub(crate) fn user_of(&self, conn: u64) -> Option<Arc<str>> {
        self.api.user_of(conn)
    }

    /// `conn`'s member name in presence.
    pub(crate) fn presence_member(&self, conn: &ConnShared) -> String {
        member(conn.session(), self.user_of(conn.id).as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_back() {
        assert_eq!(split_member(&member("n-1".into(), Some("a@b\nc"))), ("n-1", Some("a@bc")));
        assert_eq!(split_member(&member("n-1".into(), None)), ("n-1", None));
    }
}
