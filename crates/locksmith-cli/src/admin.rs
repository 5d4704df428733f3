//! Operator commands: `list`, `set`, `clear`, `reset`, `purge`.

use std::io::{BufRead, IsTerminal, Write};

use locksmith::{Error, Expired, ListQuery, Locksmith, SetAction, SetPolicy};
use serde_json::json;

use crate::cli::{ListArgs, NamesArgs, ResetArgs, SetArgs};
use crate::exit::{self, Failure};
use crate::output::{Out, cell, count, holder, safe};

/// Locks fetched per page: the list streams, page by page.
const PAGE: usize = 1000;

/// `locksmith list [PREFIX] [--expired]`.
pub(crate) async fn list(lm: &Locksmith, args: ListArgs, out: Out) -> Result<u8, Failure> {
    let expired = if args.expired {
        Expired::Include
    } else {
        Expired::Exclude
    };
    let mut query = ListQuery::prefix(args.prefix.unwrap_or_default())
        .expired(expired)
        .limit(PAGE);
    let mut total = 0;
    loop {
        let page = lm.list(query.clone()).await?;
        total += page.items.len();
        if !page.items.is_empty() {
            out.locks(&page.items);
        }
        match page.next {
            Some(after) => query = query.after(after),
            None => break,
        }
    }
    if total == 0 {
        out.note("locksmith: no locks");
    }
    Ok(exit::OK)
}

fn action_name(a: SetAction) -> &'static str {
    match a {
        SetAction::Created => "created",
        SetAction::Renewed => "renewed",
        SetAction::SkippedCreate => "skipped (free)",
        SetAction::SkippedRenew => "skipped (held)",
        _ => "other",
    }
}

fn action_key(a: SetAction) -> &'static str {
    match a {
        SetAction::Created => "created",
        SetAction::Renewed => "renewed",
        SetAction::SkippedCreate => "skipped_create",
        SetAction::SkippedRenew => "skipped_renew",
        _ => "other",
    }
}

/// `locksmith set NAME… [-n] [-r] [-k] [-t D] [-e] [--owner L]`.
pub(crate) async fn set(lm: &Locksmith, args: SetArgs, out: Out) -> Result<u8, Failure> {
    let mut policy = SetPolicy::default()
        .create(!args.only_renew)
        .renew(!args.no_renew)
        .fail(args.fail);
    if let Some(ttl) = args.ttl {
        policy = policy.ttl(ttl);
    }
    if args.no_expiry {
        policy = policy.no_expiry();
    }
    if let Some(owner) = args.owner {
        policy = policy.owner(owner);
    }
    let outcome = match lm.set_locks(args.names, policy).await {
        Err(Error::Locked { name, holder: info }) => {
            return Err(Failure::skip(
                exit::BUSY,
                format!(
                    "lock {name:?} is held by {} — nothing was changed (--fail)",
                    holder(&info)
                ),
            ));
        }
        other => other?,
    };
    let c = outcome.counts;
    if out.json() {
        for s in &outcome.statuses {
            out.object(json!({
                "type": "set",
                "name": s.name,
                "action": action_key(s.action),
                "was_locked": s.was_locked,
                "locked": s.locked,
            }));
        }
        out.object(json!({
            "type": "set_summary",
            "created": c.created,
            "renewed": c.renewed,
            "skipped_create": c.skipped_create,
            "skipped_renew": c.skipped_renew,
        }));
    } else {
        let mut table = out.table(&["NAME", "WAS LOCKED", "LOCKED", "ACTION"]);
        for s in &outcome.statuses {
            table.add_row(vec![
                safe(&s.name),
                yes_no(s.was_locked).into(),
                yes_no(s.locked).into(),
                action_name(s.action).into(),
            ]);
        }
        out.line(table);
        out.line(format!(
            "created {}, renewed {}, skipped {} free and {} held",
            c.created, c.renewed, c.skipped_create, c.skipped_renew
        ));
    }
    Ok(exit::OK)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// What `clear` and `reset` tell the operator about holders still running.
const STOPPED: &str = "locksmith: running holders are stopped: a `locksmith run` holding a \
    removed lock stops its command within a second (exit 76), and programs using the library \
    see their guard lost";

/// `locksmith clear NAME…`.
pub(crate) async fn clear(lm: &Locksmith, args: NamesArgs, out: Out) -> Result<u8, Failure> {
    let mut any = false;
    for (name, existed) in lm.clear(args.names).await? {
        any |= existed;
        if out.json() {
            out.object(json!({"type": "cleared", "name": name, "existed": existed}));
        } else if existed {
            out.line(format!("cleared {}", safe(&name)));
        } else {
            out.line(format!("{} was not held", safe(&name)));
        }
    }
    if any {
        out.note(STOPPED);
    }
    Ok(exit::OK)
}

/// `locksmith reset [--force]`.
pub(crate) async fn reset(lm: &Locksmith, args: ResetArgs, out: Out) -> Result<u8, Failure> {
    if !args.force {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(Failure::new(
                exit::USAGE,
                "reset removes every lock in the namespace and asks for confirmation on a terminal — \
                 there is none, so pass --force to do it anyway",
            ));
        }
        let page = lm
            .list(ListQuery::all().expired(Expired::Include).limit(PAGE))
            .await?;
        if page.items.is_empty() {
            out.note("locksmith: no locks to reset");
            return Ok(exit::OK);
        }
        eprintln!("These locks will be removed, whoever holds them:");
        let mut table = out.table(&["NAME", "OWNER", "HOST", "PID", "FENCE"]);
        for i in &page.items {
            table.add_row(vec![
                safe(&i.name),
                cell(&i.owner),
                cell(&i.host),
                cell(&i.pid),
                cell(&i.fence),
            ]);
        }
        eprintln!("{table}");
        if page.next.is_some() {
            eprintln!("… and more (only the first {PAGE} are shown)");
        }
        eprintln!("A `locksmith run` holding one of them stops its command within a second.");
        eprint!("Type YES to remove them: ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim_end_matches(['\n', '\r']) != "YES" {
            eprintln!("locksmith: reset cancelled; nothing was removed");
            return Ok(exit::NOT_HELD);
        }
    }
    let removed = lm.reset_all().await?;
    if out.json() {
        out.object(json!({"type": "reset", "removed": removed}));
    } else {
        out.line(format!("removed {}", count(removed, "lock", "locks")));
        if removed > 0 {
            out.note(STOPPED);
        }
    }
    Ok(exit::OK)
}

/// `locksmith purge`.
pub(crate) async fn purge(lm: &Locksmith, out: Out) -> Result<u8, Failure> {
    let purged = lm.purge_expired().await?;
    if out.json() {
        out.object(json!({"type": "purged", "removed": purged}));
    } else {
        out.line(format!(
            "purged {}",
            count(purged, "expired lock", "expired locks")
        ));
    }
    Ok(exit::OK)
}
