//! Backend selection, free of I/O: smooth weighted round robin (as nginx's
//! `ngx_http_upstream_get_peer`) and weighted least connections.

/// What the scheduler needs to know about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub weight: u32,
    /// Open connections (TCP) or sessions (UDP) to this backend.
    pub active: u64,
    /// May this backend take the next connection (healthy enough, not
    /// excluded, weight > 0)?
    pub eligible: bool,
}

/// Smooth weighted round robin. `current` holds the running weight of each
/// candidate (same length as `candidates`) between calls. Over any window of
/// `sum(weights)` picks each eligible backend is chosen exactly `weight`
/// times, interleaved rather than in bursts.
pub(crate) fn smooth_wrr(candidates: &[Candidate], current: &mut [i64]) -> Option<usize> {
    debug_assert_eq!(candidates.len(), current.len());
    let mut total: i64 = 0;
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible || c.weight == 0 {
            continue;
        }
        let w = i64::from(c.weight);
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    current[best] -= total;
    Some(best)
}

/// Weighted least connections: the eligible backend with the lowest
/// `active / weight`. Ties go to the first candidate at or after `cursor`
/// (the caller advances it), so equally loaded backends take turns.
pub(crate) fn least_connections(candidates: &[Candidate], cursor: usize) -> Option<usize> {
    let n = candidates.len();
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (cursor + k) % n;
        let c = &candidates[i];
        if !c.eligible || c.weight == 0 {
            continue;
        }
        let better = match best {
            None => true,
            // active_i / weight_i < active_b / weight_b, without division.
            Some(b) => {
                u128::from(c.active) * u128::from(candidates[b].weight)
                    < u128::from(candidates[b].active) * u128::from(c.weight)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: u32, active: u64, eligible: bool) -> Candidate {
        Candidate {
            weight,
            active,
            eligible,
        }
    }

    #[test]
    fn smooth_wrr_follows_weights_and_interleaves() {
        // nginx's documented example: weights 5,1,1 give a a b a c a a.
        let cands = [c(5, 0, true), c(1, 0, true), c(1, 0, true)];
        let mut cur = [0; 3];
        let picks: Vec<usize> = (0..7)
            .map(|_| smooth_wrr(&cands, &mut cur).expect("a pick"))
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_table() {
        struct Case {
            desc: &'static str,
            cands: Vec<Candidate>,
            picks: usize,
            want: Vec<usize>,
        }
        let cases = [
            Case {
                desc: "equal weights share evenly",
                cands: vec![c(1, 0, true), c(1, 0, true), c(1, 0, true)],
                picks: 300,
                want: vec![100, 100, 100],
            },
            Case {
                desc: "weight zero gets nothing",
                cands: vec![c(3, 0, true), c(0, 0, true), c(1, 0, true)],
                picks: 400,
                want: vec![300, 0, 100],
            },
            Case {
                desc: "ineligible backends are skipped",
                cands: vec![c(2, 0, false), c(1, 0, true), c(1, 0, true)],
                picks: 10,
                want: vec![0, 5, 5],
            },
            Case {
                desc: "nothing eligible picks nothing",
                cands: vec![c(2, 0, false), c(0, 0, true)],
                picks: 3,
                want: vec![0, 0],
            },
        ];
        for case in cases {
            let mut cur = vec![0; case.cands.len()];
            let mut got = vec![0; case.cands.len()];
            for _ in 0..case.picks {
                if let Some(i) = smooth_wrr(&case.cands, &mut cur) {
                    got[i] += 1;
                }
            }
            assert_eq!(got, case.want, "{}", case.desc);
        }
    }

    #[test]
    fn least_connections_table() {
        struct Case {
            desc: &'static str,
            cands: Vec<Candidate>,
            cursor: usize,
            want: Option<usize>,
        }
        let cases = [
            Case {
                desc: "fewest connections wins",
                cands: vec![c(1, 5, true), c(1, 2, true), c(1, 3, true)],
                cursor: 0,
                want: Some(1),
            },
            Case {
                desc: "weight scales the load: 4/4 beats 2/1",
                cands: vec![c(1, 2, true), c(4, 4, true)],
                cursor: 0,
                want: Some(1),
            },
            Case {
                desc: "ties go to the cursor's side",
                cands: vec![c(1, 1, true), c(1, 1, true), c(1, 1, true)],
                cursor: 2,
                want: Some(2),
            },
            Case {
                desc: "ineligible and weight zero are skipped",
                cands: vec![c(1, 0, false), c(0, 0, true), c(1, 9, true)],
                cursor: 0,
                want: Some(2),
            },
            Case {
                desc: "nothing eligible",
                cands: vec![c(1, 0, false)],
                cursor: 0,
                want: None,
            },
        ];
        for case in cases {
            assert_eq!(
                least_connections(&case.cands, case.cursor),
                case.want,
                "{}",
                case.desc
            );
        }
    }
}
