//! Port ranges as a bounded number of LPM entries, and the resolution of overlapping rules into
//! disjoint intervals with one winner each (failsafe over deny over allow, then policy order).

use std::collections::BTreeSet;

/// One prefix-aligned block of ports: `first .. first + 2^(16 - prefix_len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBlock {
    pub first: u16,
    /// 0 (every port) to 16 (one port).
    pub prefix_len: u8,
}

impl PortBlock {
    #[must_use]
    pub fn last(self) -> u16 {
        let size = 1u32 << (16 - u32::from(self.prefix_len));
        // first + size - 1 never exceeds 65535 for an aligned block.
        u16::try_from(u32::from(self.first) + size - 1).unwrap_or(u16::MAX)
    }
}

/// Splits `first..=last` into the fewest prefix-aligned blocks: at most 30 for any range, so a range
/// of any width costs a bounded number of map entries, and the kernel one lookup.
#[must_use]
pub fn blocks(first: u16, last: u16) -> Vec<PortBlock> {
    let mut out = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        // The largest power of two that both divides `start` and fits in what is left.
        let mut size_log = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while (1u32 << size_log) > end - start + 1 {
            size_log -= 1;
        }
        out.push(PortBlock {
            first: u16::try_from(start).unwrap_or(u16::MAX),
            prefix_len: u8::try_from(16 - size_log).unwrap_or(16),
        });
        start += 1 << size_log;
    }
    out
}

/// A rule's claim on a port interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim<T> {
    pub first: u16,
    pub last: u16,
    /// Higher wins.
    pub priority: u8,
    /// Lower wins among equal priorities (policy order).
    pub order: usize,
    pub outcome: T,
}

/// Resolves overlapping claims into disjoint `(first, last, winner)` intervals, merging neighbours
/// with the same winner. Ports no claim covers are left out.
#[must_use]
pub fn resolve<T: Copy + PartialEq>(claims: &[Claim<T>]) -> Vec<(u16, u16, Claim<T>)> {
    let mut cuts = BTreeSet::new();
    for claim in claims {
        cuts.insert(u32::from(claim.first));
        cuts.insert(u32::from(claim.last) + 1);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out: Vec<(u16, u16, Claim<T>)> = Vec::new();
    for pair in cuts.windows(2) {
        let (start, end) = (pair[0], pair[1] - 1);
        let winner = claims
            .iter()
            .filter(|c| u32::from(c.first) <= start && end <= u32::from(c.last))
            .max_by(|a, b| a.priority.cmp(&b.priority).then(b.order.cmp(&a.order)));
        let Some(winner) = winner else { continue };
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            continue;
        };
        match out.last_mut() {
            Some((_, prev_end, prev))
                if u32::from(*prev_end) + 1 == u32::from(start)
                    && prev.outcome == winner.outcome
                    && prev.order == winner.order =>
            {
                *prev_end = end;
            }
            _ => out.push((start, end, *winner)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[PortBlock]) -> Vec<(u16, u16)> {
        blocks.iter().map(|b| (b.first, b.last())).collect()
    }

    #[test]
    fn single_port_is_one_block() {
        assert_eq!(
            blocks(443, 443),
            [PortBlock {
                first: 443,
                prefix_len: 16
            }]
        );
    }

    #[test]
    fn full_range_is_one_block() {
        assert_eq!(
            blocks(0, u16::MAX),
            [PortBlock {
                first: 0,
                prefix_len: 0
            }]
        );
    }

    #[test]
    fn blocks_tile_the_range_exactly() {
        for (first, last) in [(1, 65535), (9000, 9100), (1023, 1025), (8080, 8080), (2, 3)] {
            let b = blocks(first, last);
            assert!(b.len() <= 30, "{first}-{last}: {} blocks", b.len());
            let spans = covered(&b);
            assert_eq!(spans.first().map(|s| s.0), Some(first));
            assert_eq!(spans.last().map(|s| s.1), Some(last));
            for pair in spans.windows(2) {
                assert_eq!(u32::from(pair[0].1) + 1, u32::from(pair[1].0));
            }
        }
    }

    #[test]
    fn worst_case_stays_bounded() {
        assert_eq!(blocks(1, 65534).len(), 30);
    }

    #[test]
    fn higher_priority_wins_and_neighbours_merge() {
        let claims = [
            Claim {
                first: 1,
                last: 100,
                priority: 1,
                order: 0,
                outcome: 'a',
            },
            Claim {
                first: 50,
                last: 60,
                priority: 2,
                order: 5,
                outcome: 'd',
            },
            Claim {
                first: 90,
                last: 200,
                priority: 1,
                order: 1,
                outcome: 'b',
            },
        ];
        let resolved: Vec<(u16, u16, char)> = resolve(&claims)
            .into_iter()
            .map(|(f, l, c)| (f, l, c.outcome))
            .collect();
        assert_eq!(
            resolved,
            [(1, 49, 'a'), (50, 60, 'd'), (61, 100, 'a'), (101, 200, 'b')]
        );
    }
}
