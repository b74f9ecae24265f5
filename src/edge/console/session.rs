//! Console sign-in: a token (admin or read-only) is exchanged once for a session,
//! carried by a cookie that scripts cannot read (HttpOnly), that no other site's page
//! sends (SameSite=Strict), and that travels only over TLS when the listener serves TLS
//! (Secure). Each session has its own CSRF token, which every action form carries back.
//! Sessions live in memory: a restart signs everyone out, which is the safe direction.

use crate::auth::Secret;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "spg_console";

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept; the oldest goes first.
const MAX_SESSIONS: usize = 1000;

/// What a signed-in person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signed in with the admin token: sees and acts.
    Admin,
    /// Signed in with the read-only token: sees, never acts.
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// One signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// The name given at sign-in (or the role), for the audit log.
    pub name: String,
    /// Sent back by every action form.
    pub csrf: String,
    last_seen: Instant,
}

impl Session {
    /// How the audit log names this person: `alice (admin)`.
    pub fn who(&self) -> String {
        format!("{} ({})", self.name, self.role.as_str())
    }

    pub fn can_act(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        eq(token, &self.csrf)
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The tokens that sign in, and the sessions they opened.
pub struct Sessions {
    admin: Option<Secret>,
    read_only: Option<Secret>,
    secure: bool,
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// `secure`: the listener serves TLS, so the cookie is marked Secure.
    pub fn new(admin: Option<Secret>, read_only: Option<Secret>, secure: bool) -> Self {
        Sessions {
            admin,
            read_only,
            secure,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any token can sign in (the console is off without one).
    pub fn enabled(&self) -> bool {
        self.admin.is_some() || self.read_only.is_some()
    }

    /// The role `token` signs in as, if any (both compared in constant time).
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let admin = self.admin.as_ref().is_some_and(|s| eq(token, s.expose()));
        let read_only = self
            .read_only
            .as_ref()
            .is_some_and(|s| eq(token, s.expose()));
        if admin {
            Some(Role::Admin)
        } else if read_only {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// Opens a session; returns its id (the cookie's value).
    pub fn open(&self, role: Role, name: &str) -> String {
        let name: String = name
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(60)
            .collect();
        let id = random_hex();
        let mut open = self.open.lock().expect("session lock");
        open.retain(|_, s| s.last_seen.elapsed() < IDLE);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(
            id.clone(),
            Session {
                role,
                name: if name.is_empty() {
                    role.as_str().to_string()
                } else {
                    name
                },
                csrf: random_hex(),
                last_seen: Instant::now(),
            },
        );
        id
    }

    /// The session of the request's cookie, if open (and not idle too long).
    pub fn find(&self, headers: &http::HeaderMap) -> Option<Session> {
        let id = cookie_value(headers)?;
        let mut open = self.open.lock().expect("session lock");
        let s = open.get_mut(&id)?;
        if s.last_seen.elapsed() >= IDLE {
            open.remove(&id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    /// Ends the request's session.
    pub fn close(&self, headers: &http::HeaderMap) {
        if let Some(id) = cookie_value(headers) {
            self.open.lock().expect("session lock").remove(&id);
        }
    }

    /// The `Set-Cookie` value carrying session `id` (empty with max-age 0 to end it).
    pub fn cookie(&self, id: Option<&str>) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        match id {
            Some(id) => format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict{secure}"),
            None => {
                format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
            }
        }
    }
}

fn cookie_value(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_choose_the_role_and_the_cookie_is_locked_down() {
        let s = Sessions::new(Some(Secret::new("adm")), Some(Secret::new("ro")), true);
        assert_eq!(s.role_of("adm"), Some(Role::Admin));
        assert_eq!(s.role_of("ro"), Some(Role::ReadOnly));
        assert_eq!(s.role_of("ad"), None);
        assert_eq!(s.role_of(""), None);
        let id = s.open(Role::ReadOnly, " alice\n");
        let c = s.cookie(Some(&id));
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
            assert!(c.contains(part), "{c}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("x=1; {COOKIE}={id}").parse().unwrap(),
        );
        let found = s.find(&h).expect("open session");
        assert_eq!(found.who(), "alice (read-only)");
        assert!(!found.can_act());
        assert!(found.csrf_matches(&found.csrf.clone()));
        assert!(!found.csrf_matches("nope"));
        s.close(&h);
        assert!(s.find(&h).is_none());
        let plain = Sessions::new(Some(Secret::new("adm")), None, false);
        assert!(!plain.cookie(Some("x")).contains("Secure"));
    }
}
