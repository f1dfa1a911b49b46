//! Random operation sequences on a plain image against a byte-array model: reads always
//! match, our check stays clean after every flush, and a reopen sees the same bytes.

use proptest::prelude::*;
use qcow2zoned::{check_image, MemStorage, OpenOptions, Qcow2, Storage};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Write(u64, u64, u8),
    Zeroes(u64, u64),
    Discard(u64, u64),
    Flush,
    Reopen,
}

const SIZE: u64 = 256 * 1024;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(40_000)));
    prop_oneof![
        6 => (range.clone(), any::<u8>()).prop_map(|((o, l), b)| Op::Write(o, l, b)),
        1 => range.clone().prop_map(|(o, l)| Op::Zeroes(o, l)),
        1 => range.prop_map(|(o, l)| Op::Discard(o, l)),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn fresh(cs: u64) -> Arc<MemStorage> {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.qcow2");
    Qcow2::create(&f, SIZE, cs).unwrap();
    Arc::new(MemStorage::new(std::fs::read(&f).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn plain_image_matches_model(cs_bits in 9u32..=16, ops in proptest::collection::vec(op(), 1..40)) {
        let cs = 1u64 << cs_bits;
        let st = fresh(cs);
        let mut model = vec![0u8; SIZE as usize];
        let mut q = Qcow2::open_with(st.clone(), OpenOptions::default()).unwrap();
        for op in ops {
            match op {
                Op::Write(o, l, b) => {
                    q.write_at(o, &vec![b; l as usize]).unwrap();
                    model[o as usize..(o + l) as usize].fill(b);
                }
                Op::Zeroes(o, l) => {
                    q.write_zeroes(o, l).unwrap();
                    model[o as usize..(o + l) as usize].fill(0);
                }
                Op::Discard(o, l) => {
                    q.discard(o, l).unwrap();
                    model[o as usize..(o + l) as usize].fill(0);
                }
                Op::Flush => {
                    q.flush().unwrap();
                    let rep = check_image(&*st).unwrap();
                    prop_assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
                }
                Op::Reopen => {
                    q.close().unwrap();
                    let rep = check_image(&*st).unwrap();
                    prop_assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
                    q = Qcow2::open_with(st.clone(), OpenOptions::default()).unwrap();
                }
            }
            let mut back = vec![0u8; SIZE as usize];
            q.read_at(0, &mut back).unwrap();
            prop_assert!(back == model);
        }
        q.close().unwrap();
        let q = Qcow2::open_with(st.clone(), OpenOptions { read_only: true, ..Default::default() }).unwrap();
        let mut back = vec![0u8; SIZE as usize];
        q.read_at(0, &mut back).unwrap();
        prop_assert!(back == model);
        prop_assert!(st.len().unwrap() > 0);
    }
}
