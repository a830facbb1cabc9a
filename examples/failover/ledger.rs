//! The fenced ledger: a resource that remembers the highest fencing token per job and
//! refuses lower ones, in memory or (across processes) in PostgreSQL.

use std::collections::HashMap;
use std::sync::Mutex;

use leases::Key;

use crate::story::Error;

/// A resource that remembers the highest fencing token per job and refuses lower ones:
/// what makes a stale holder harmless.
/// In-process ledger: the highest token per key, and every accepted write.
pub type MemoryLedger = Mutex<(HashMap<Key, u64>, Vec<(Key, u64, String)>)>;

pub enum Ledger {
    Memory(MemoryLedger),
    #[cfg(feature = "postgres")]
    Postgres(tokio_postgres::Client),
}

impl Ledger {
    /// Records a unit of work by `who` with `token`; `Err(newer)` if a newer token wrote.
    pub async fn write(&self, key: &Key, token: u64, who: &str) -> Result<Result<(), u64>, Error> {
        match self {
            Ledger::Memory(m) => {
                let mut m = m.lock().unwrap();
                let seen = m.0.entry(key.clone()).or_insert(0);
                if token < *seen {
                    return Ok(Err(*seen));
                }
                *seen = token;
                m.1.push((key.clone(), token, who.to_string()));
                Ok(Ok(()))
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(c) => {
                let (k, t) = (key.to_string(), token as i64);
                let row = c
                    .query_one(
                        "WITH f AS (
                            INSERT INTO failover_fence (key, token) VALUES ($1, $2)
                            ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token
                            WHERE failover_fence.token <= EXCLUDED.token RETURNING 1),
                         w AS (INSERT INTO failover_writes (key, token, who)
                            SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM f))
                         SELECT EXISTS (SELECT 1 FROM f),
                                (SELECT token FROM failover_fence WHERE key = $1)",
                        &[&k, &t, &who],
                    )
                    .await?;
                let accepted: bool = row.get(0);
                let seen: Option<i64> = row.get(1);
                Ok(if accepted {
                    Ok(())
                } else {
                    Err(seen.unwrap_or(0) as u64)
                })
            }
        }
    }

    /// Who wrote, in order: (key, token, worker), one line per change of hands.
    pub async fn history(&self) -> Result<Vec<(String, u64, String)>, Error> {
        let all: Vec<(String, u64, String)> = match self {
            Ledger::Memory(m) => {
                let m = m.lock().unwrap();
                m.1.iter()
                    .map(|(k, t, w)| (k.to_string(), *t, w.clone()))
                    .collect()
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(c) => c
                .query(
                    "SELECT key, token, who FROM failover_writes ORDER BY id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
                .collect(),
        };
        let mut out: Vec<(String, u64, String)> = Vec::new();
        for w in all {
            let last_of_key = out.iter().rev().find(|o| o.0 == w.0);
            if last_of_key.is_none_or(|o| o.1 != w.1) {
                out.push(w);
            }
        }
        Ok(out)
    }
}

/// Prints who wrote, in order, and checks that every change of hands grew the token.
pub async fn print_history(ledger: &Ledger) -> Result<(), Error> {
    println!("\nwho wrote, in order (key, token, worker):");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, token, who) in ledger.history().await? {
        println!("  {key}  {token}  {who}");
        if let Some(t) = last.insert(key, token) {
            assert!(token > t, "fencing tokens only grow");
        }
    }
    println!("every job changed hands with a larger token; nothing was written by two holders");
    Ok(())
}
