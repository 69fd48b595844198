//! Tests of how a commit's postings are grouped and encoded: by a hash
//! of the term, as sorting every pair by its term would; runs of a term
//! encoded as its joined postings.

use super::*;

#[test]
fn runs_of_a_term_encode_as_its_joined_postings() {
    // A term's runs, adjacent and in index order, some empty: the bytes
    // of the table holding each term once with its runs joined.
    let runs: Vec<super::Run<'_>> = vec![
        (&b"Na"[..], &[1, 2][..]),
        (&b"Na"[..], &[5][..]),
        (&b"Nb"[..], &[][..]),
        (&b"Yb"[..], &[3][..]),
        (&b"Yc"[..], &[4, 9][..]),
        (&b"Yc"[..], &[][..]),
        (&b"Yc"[..], &[700, 100_000][..]),
    ];
    let table: Table<'_> = [
        (&b"Na"[..], vec![1u64, 2, 5]),
        (&b"Yb"[..], vec![3]),
        (&b"Yc"[..], vec![4, 9, 700, 100_000]),
    ]
    .into_iter()
    .collect();
    let bytes = super::encode_runs(&runs);
    assert_eq!(bytes, encode_table(&table));
    let back = decode_table(&bytes).unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[2], (b"Yc".to_vec(), vec![4, 9, 700, 100_000]));
    assert!(super::encode_runs(&[(&b"Nz"[..], &[][..])]).is_empty());
}

/// A term as its key sorts: prefix, length, value.
type TermKey = (u8, usize, Vec<u8>);

proptest! {
    /// Grouping by hash gives what sorting every pair by its term's bytes
    /// gave: each term once, in key order, with its indexes ascending and
    /// each once; also when unrelated terms share a hash (forced here by
    /// replacing the hashes with a few values).
    #[test]
    fn postings_grouped_by_hash_are_the_postings_sorted_by_term(
        picks in proptest::collection::vec((0usize..12, 0u64..4), 0..300),
        collide in any::<bool>(),
    ) {
        let terms: Vec<(u8, Vec<u8>)> = (0..12u8)
            .map(|i| (if i % 3 == 0 { b'Y' } else { b'N' }, vec![b'a' + i % 5; 1 + usize::from(i % 4)]))
            .collect();
        // Pushed in ascending index order, a term at most twice per index.
        let mut index = 0;
        let mut pairs = Vec::new();
        for (t, step) in &picks {
            index += step;
            let mut p = super::Pair::new(terms[*t].0, &terms[*t].1, index);
            if collide {
                p.hash = p.value.len() as u64 % 2;
            }
            pairs.push(p);
        }
        let mut expected: BTreeMap<TermKey, Vec<u64>> = BTreeMap::new();
        for p in &pairs {
            let ix = expected.entry((p.prefix, p.value.len(), p.value.to_vec())).or_default();
            if ix.last() != Some(&p.index) {
                ix.push(p.index);
            }
        }
        let (grouped, all) = super::group_postings(&mut pairs);
        let got: Vec<(TermKey, Vec<u64>)> = grouped
            .into_iter()
            .map(|(prefix, value, ix)| ((prefix, value.len(), value.to_vec()), all[ix].to_vec()))
            .collect();
        prop_assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
    }
}
