//! `kvmkit workloads`: the workload catalogue (`kvmkit_workloads::CATALOGUE`), one
//! workload a line, name first; and the spec check `run` and `host` share.

use anyhow::bail;
use kvmkit_workloads::{Entry, Workload, CATALOGUE};

/// Prints the catalogue: name, grammar, where it runs, help and units.
pub fn run() -> anyhow::Result<u8> {
    let width = CATALOGUE.iter().map(|e| e.grammar.len()).max().unwrap_or(0);
    for e in CATALOGUE {
        crate::logging::outln!(
            "{:<12} {:<width$}  {:<17}  {} ({})",
            e.name,
            e.grammar,
            envs(e),
            e.help,
            e.units
        );
    }
    Ok(0)
}

/// Where `e` runs, as `guest,host,bench`.
pub fn envs(e: &Entry) -> String {
    let all = [("guest", e.envs.guest), ("host", e.envs.host), ("bench", e.envs.bench)];
    all.iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `spec` (given as `flag`) with the catalogue, for the environment `place` ("on
/// the host") that runs the entries `runs` accepts; the error names the flag, the reason
/// and the grammar.
pub fn parse_for(spec: &str, flag: &str, place: &str, runs: impl Fn(&Entry) -> bool) -> anyhow::Result<Workload> {
    let accepted = || {
        CATALOGUE
            .iter()
            .filter(|e| runs(e))
            .map(|e| e.grammar)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match Workload::parse(spec) {
        Ok(w) if runs(w.entry()) => Ok(w),
        Ok(w) => bail!(
            "{flag} {spec}: {} does not run {place}; choose one of {} (kvmkit workloads lists them all)",
            w.name(),
            accepted()
        ),
        Err(why) => {
            let name = spec.split(':').next().unwrap_or_default();
            match kvmkit_workloads::find(name) {
                Some(e) => bail!("{flag} {spec}: {why}; the grammar is {} ({})", e.grammar, e.units),
                None => bail!(
                    "{flag} {spec}: unknown workload '{name}'; choose one of {} (kvmkit workloads lists them)",
                    accepted()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_grammar() {
        let err = parse_for("primes:abc", "--workload", "anywhere", |_| true)
            .expect_err("bad")
            .to_string();
        assert!(err.contains("not a number") && err.contains("primes[:N]"), "{err}");
        let err = parse_for("exits:10", "--workload", "on the host", |e| e.envs.host)
            .expect_err("guest only")
            .to_string();
        assert!(
            err.contains("does not run on the host") && err.contains("md5[:MIB]"),
            "{err}"
        );
        let err = parse_for("bogus", "--workload", "on the host", |e| e.envs.host)
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("unknown workload 'bogus'"), "{err}");
        assert_eq!(envs(kvmkit_workloads::find("exits").expect("exits")), "guest,bench");
    }
}
