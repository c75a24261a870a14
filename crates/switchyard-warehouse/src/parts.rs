//! The lake's part files: each holds a range of the event log, and is named by it. The loader
//! writes and compacts them; readers skip the files another file's range covers.

/// The name of the part file holding log entries `first_seq..=last_seq`.
pub fn part_name(first_seq: i64, last_seq: i64) -> String {
    format!("part-{first_seq:020}-{last_seq:020}.parquet")
}

/// The log range a part file's name holds: `part-{first}-{last}.parquet`.
pub fn part_range(name: &str) -> Option<(i64, i64)> {
    let (first, last) = name.strip_prefix("part-")?.strip_suffix(".parquet")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Whether another of a directory's `ranges` covers `range`: the range of a compaction's input,
/// once its output is in place.
pub fn covered(range: (i64, i64), ranges: &[(i64, i64)]) -> bool {
    let (first, last) = range;
    ranges.iter().any(|&(f, l)| f <= first && last <= l && (f, l) != range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_back_their_range_and_merged_ranges_cover_theirs() {
        assert_eq!(part_range(&part_name(8, 42)), Some((8, 42)));
        assert_eq!(part_range("part-8-x.parquet"), None);
        assert_eq!(part_range(".part-1-2.parquet.tmp"), None);
        let ranges = [(1, 4), (5, 9), (1, 9)];
        assert!(covered((1, 4), &ranges) && covered((5, 9), &ranges));
        assert!(!covered((1, 9), &ranges), "a range does not cover itself");
        assert!(!covered((5, 12), &ranges));
    }
}
