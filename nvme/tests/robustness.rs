//! Guest input never panics the controller: random commands on the admin and I/O queues each
//! get exactly one completion (AERs excepted) and the controller stays ready.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::{GuestMemory, Status};
use proptest::prelude::*;

/// Opcodes worth hitting often (the implemented ones) plus anything.
fn opcode(admin: bool) -> impl Strategy<Value = u8> {
    let known: Vec<u8> = if admin {
        vec![
            0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18,
        ]
    } else {
        vec![0x00, 0x01, 0x02, 0x08, 0x79, 0x7A, 0x7D]
    };
    prop_oneof![3 => proptest::sample::select(known), 1 => any::<u8>()]
}

/// Data pointers: mostly inside guest memory (mapped), sometimes anywhere.
fn pointer() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0x100_0000u64..0x200_0000).prop_map(|a| a & !0x3),
        1 => 0x100_0000u64..0x200_0000,
        1 => any::<u64>(),
    ]
}

fn dword() -> impl Strategy<Value = u32> {
    prop_oneof![2 => 0u32..64, 1 => 0u32..0x1_0000, 1 => any::<u32>()]
}

#[derive(Debug, Clone)]
struct Raw {
    admin: bool,
    opc: u8,
    psdt: u8,
    nsid: u32,
    prp1: u64,
    prp2: u64,
    cdw: [u32; 6],
}

fn raw() -> impl Strategy<Value = Raw> {
    any::<bool>()
        .prop_flat_map(|admin| {
            (
                Just(admin),
                opcode(admin),
                prop_oneof![4 => Just(0u8), 1 => 0u8..4],
                prop_oneof![4 => Just(1u32), 1 => any::<u32>()],
                pointer(),
                pointer(),
                proptest::array::uniform6(dword()),
            )
        })
        .prop_map(|(admin, opc, psdt, nsid, prp1, prp2, cdw)| Raw {
            admin,
            opc,
            psdt,
            nsid,
            prp1,
            prp2,
            cdw,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_always_complete(cmds in proptest::collection::vec(raw(), 1..40)) {
        let mut r = rig(Geo::default(), 4096);
        let d = &mut r.d;
        // Fill the data area with recognisable garbage (PRP lists, SGL segments...).
        let base = d.alloc(16 << 20);
        assert!(base <= 0x100_0000);
        let noise = pattern(16 << 20, 0x5A);
        d.host.mem.write(0x100_0000, &noise[..(16 << 20) - (0x100_0000 - base) as usize]).unwrap();
        let mut aers = 0;
        for c in cmds {
            // Deleting queue 1 or re-running Number of Queues would only test the test driver.
            let qid_arg = c.cdw[0] & 0xFFFF;
            if c.admin && matches!(c.opc, 0x00 | 0x04) && qid_arg == 1 {
                continue;
            }
            let mut cmd = Command::new(c.opc).psdt(c.psdt).nsid(c.nsid).dptr(c.prp1, c.prp2);
            for (i, v) in c.cdw.iter().enumerate() {
                cmd = cmd.cdw(10 + i, *v);
            }
            let sq = if c.admin { 0 } else { 1 };
            let cid = d.submit(sq, cmd);
            d.process();
            match d.reap(sq) {
                Some(done) => {
                    prop_assert_eq!(done.cid, cid);
                    prop_assert_eq!(done.sqid, sq);
                }
                None => {
                    prop_assert!(c.admin && c.opc == 0x0C, "no completion for {:?}", c);
                    aers += 1;
                    prop_assert!(aers <= 4);
                }
            }
            prop_assert!(d.ctrl.ready());
            prop_assert_eq!(d.reg32(0x1C) & 0x2, 0, "no fatal status from a command");
        }
        // The controller still does I/O correctly afterwards.
        let (c, buf) = d.report(1, 0, 4096, 0, 1, false);
        prop_assert_eq!(c.status, Status::SUCCESS);
        let empty = nvme::test_utils::parse_report(&buf, 0, 16).1;
        if let Some(z) = empty.first() {
            let data = pattern(4096, 1);
            prop_assert_eq!(d.write(1, z.zslba, &data, false).status, Status::SUCCESS);
            let (c, got) = d.read(1, z.zslba, 1);
            prop_assert_eq!(c.status, Status::SUCCESS);
            prop_assert!(got == data);
        }
    }
}
