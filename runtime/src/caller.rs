//! Who makes a request: the bearer token's name and scope, as the services see them. The HTTP
//! layer authenticates (`http/auth.rs`) and hands a [`Caller`] down; the services use it for
//! what depends on who asks — who may move a module name, whose idempotency keys a key is
//! matched against, who sees grant values.

use serde::{Deserialize, Serialize};

/// What a token may do. Ordered: each scope may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read jobs, runs, modules, workflows and schedules (grant values are hidden).
    Read,
    /// Also upload modules, submit, cancel and retry jobs, create workflows and start runs.
    Submit,
    /// Also manage schedules, move module names set by other tokens, and see grant values.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name; `None` when the server runs without tokens (loopback
    /// only), where the one local user is an administrator.
    pub token: Option<String>,
    pub scope: Scope,
}

impl Caller {
    /// The caller of a server without tokens, and of the server's own work (cron).
    pub fn local_admin() -> Caller {
        Caller {
            token: None,
            scope: Scope::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.scope >= Scope::Admin
    }

    /// The namespace this caller's idempotency keys live in: one token's keys never match
    /// another's, and the server's own (`sys/…`, cron ticks) never match a client's.
    pub fn key_namespace(&self) -> String {
        match &self.token {
            Some(name) => format!("token/{name}/"),
            None => "local/".to_string(),
        }
    }
}
