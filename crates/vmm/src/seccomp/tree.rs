//! seccompiler's program with its syscall-number dispatch turned into a
//! binary search.
//!
//! seccompiler matches the syscall number against each listed call in turn
//! (`JEQ nr; JA chain; JA next`), so deciding a call walks on average half of
//! a 260-360 instruction program. That is paid twice: on every syscall, and
//! when the filter is installed. Linux (5.11 and later) emulates a new filter
//! once for every syscall number of the architecture (~460 here) to find the
//! calls it allows whatever their arguments, which it then lets through
//! without running any filter: ~460 linear walks, 0.85 ms for a 300
//! instruction chain on this lab's host, on the start-up path of every thread
//! that installs one. A search tree makes each walk ~2 log2(n) jumps.
//!
//! The argument checks ("chains") are copied unchanged; only the dispatch
//! in front of them is rebuilt, and anything that is not seccompiler's shape
//! is refused (the caller keeps the program as it was). A unit test runs
//! both programs over every syscall number and the argument values the rules
//! name and compares the decisions.

use seccompiler::sock_filter;

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// offsetof(struct seccomp_data, nr).
const NR: u32 = 0;

/// One listed call: its number and where seccompiler's program compares it.
struct Block {
    nr: u32,
    at: usize,
}

fn at(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The listed calls of seccompiler's program `p`, found by walking its
/// dispatch the way an unlisted number does (every `JEQ nr` false, every
/// `JA` taken), and where that walk ends: the default action. Or why `p` is
/// not in seccompiler's shape.
fn parse(p: &[sock_filter]) -> Result<(Vec<Block>, usize), String> {
    // LD arch; JEQ AUDIT_ARCH_X86_64 (skip 1); RET kill; LD nr.
    let head_ok = p.len() > 5
        && p[0].code == LD_W_ABS
        && p[1].code == JEQ_K
        && (p[1].jt, p[1].jf) == (1, 0)
        && p[2].code == RET_K
        && p[3] == at(LD_W_ABS, 0, 0, NR);
    if !head_ok {
        return Err("no architecture check and syscall-number load at the start".into());
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut pc = 4;
    loop {
        let ins = p
            .get(pc)
            .ok_or_else(|| format!("the dispatch runs off the end at {pc}"))?;
        match ins.code {
            JEQ_K => {
                if blocks.iter().any(|b| b.nr == ins.k) {
                    return Err(format!("call {} listed twice", ins.k));
                }
                blocks.push(Block { nr: ins.k, at: pc });
                pc += 1 + usize::from(ins.jf);
            }
            JA => pc += 1 + ins.k as usize,
            RET_K if !blocks.is_empty() => {
                blocks.sort_by_key(|b| b.nr);
                return Ok((blocks, pc));
            }
            c => return Err(format!("instruction {pc} ({c:#x}) in the dispatch")),
        }
    }
}

/// A `JA` to patch once its target is placed: (its index, target).
type Fixup = (usize, usize);

/// Emits the search over `blocks[lo..hi]` (sorted, non-empty); `default`
/// is the index of the original's default action. Jumps into the original
/// go to `fix`, patched once the tree's length is known.
fn emit(
    blocks: &[Block],
    lo: usize,
    hi: usize,
    out: &mut Vec<sock_filter>,
    fix: &mut Vec<Fixup>,
    default: usize,
) -> Result<(), String> {
    if hi - lo == 1 {
        // nr == this call: to the original's comparison of it, which matches
        // and enters the call's checks; else to the default action.
        out.push(at(JEQ_K, 0, 1, blocks[lo].nr));
        fix.push((out.len(), blocks[lo].at));
        out.push(at(JA, 0, 0, 0));
        fix.push((out.len(), default));
        out.push(at(JA, 0, 0, 0));
        return Ok(());
    }
    let mid = lo + (hi - lo) / 2;
    // nr >= blocks[mid]: the JA to the upper half; else fall into the lower.
    out.push(at(JGE_K, 0, 1, blocks[mid].nr));
    let upper = out.len();
    out.push(at(JA, 0, 0, 0));
    emit(blocks, lo, mid, out, fix, default)?;
    out[upper].k = u32::try_from(out.len() - (upper + 1)).map_err(|e| e.to_string())?;
    emit(blocks, mid, hi, out, fix, default)
}

/// The compact search over `blocks[lo..hi]`, for up to ~85 calls: a node is
/// one `JGE` whose true branch skips the lower half, a leaf `JEQ nr` whose
/// false branch goes to the default action placed right after the tree,
/// then a `JA` to the original's comparison. Offsets are patched by
/// [`search_tree`]; `leaves` collects (index of the leaf's `JEQ`, block).
fn emit_compact(
    blocks: &[Block],
    lo: usize,
    hi: usize,
    out: &mut Vec<sock_filter>,
    leaves: &mut Vec<(usize, usize)>,
) -> bool {
    if hi - lo == 1 {
        leaves.push((out.len(), lo));
        out.push(at(JEQ_K, 0, 0, blocks[lo].nr));
        out.push(at(JA, 0, 0, 0));
        return true;
    }
    let mid = lo + (hi - lo) / 2;
    let node = out.len();
    out.push(at(JGE_K, 0, 0, blocks[mid].nr));
    if !emit_compact(blocks, lo, mid, out, leaves) {
        return false;
    }
    match u8::try_from(out.len() - (node + 1)) {
        Ok(skip) => out[node].jt = skip,
        Err(_) => return false,
    }
    emit_compact(blocks, mid, hi, out, leaves)
}

/// `p` (seccompiler's output) with the same decisions and a binary search on
/// the syscall number in front of its linear dispatch: the search jumps
/// straight to the one comparison that matches (or to the default action),
/// and seccompiler's instructions follow unchanged.
pub fn search_tree(p: &[sock_filter]) -> Result<Vec<sock_filter>, String> {
    let (blocks, default) = parse(p)?;
    if let Some(out) = compact(p, &blocks, default) {
        return Ok(out);
    }
    let mut tree: Vec<sock_filter> = Vec::new();
    let mut fix = Vec::new();
    emit(&blocks, 0, blocks.len(), &mut tree, &mut fix, default)?;
    // The original's instructions after its `LD nr` move down by the tree's
    // length; its internal jumps are relative and stay right.
    let shift = tree.len();
    for (ja, target) in fix {
        // Targets are original indices >= 4; the JA sits at 4 + ja.
        let to = target + shift;
        tree[ja].k = u32::try_from(to - (4 + ja + 1)).map_err(|e| e.to_string())?;
    }
    finish(p, tree)
}

/// The compact form (see [`emit_compact`]), or None when an offset does not
/// fit a conditional jump's 8 bits.
fn compact(p: &[sock_filter], blocks: &[Block], default: usize) -> Option<Vec<sock_filter>> {
    let mut tree = Vec::new();
    let mut leaves = Vec::new();
    if !emit_compact(blocks, 0, blocks.len(), &mut tree, &mut leaves) {
        return None;
    }
    let default_at = tree.len();
    tree.push(p[default].clone());
    // The original after its `LD nr` starts at 4 + tree.len() in the result.
    let shift = tree.len();
    for (jeq, b) in leaves {
        tree[jeq].jf = u8::try_from(default_at - (jeq + 1)).ok()?;
        let ja = jeq + 1;
        tree[ja].k = u32::try_from(blocks[b].at + shift - (4 + ja + 1)).ok()?;
    }
    finish(p, tree).ok()
}

/// seccompiler's start, `tree`, then the rest of `p` unchanged.
fn finish(p: &[sock_filter], tree: Vec<sock_filter>) -> Result<Vec<sock_filter>, String> {
    let mut out = p[..4].to_vec();
    out.extend(tree);
    out.extend_from_slice(&p[4..]);
    if out.len() > 4096 {
        return Err(format!("{} instructions: more than a filter may hold", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = 0x7fff_0000;
    const TRAP: u32 = 0x0003_0000;

    fn head() -> Vec<sock_filter> {
        vec![
            at(LD_W_ABS, 0, 0, 4),
            at(JEQ_K, 1, 0, 0xc000_003e),
            at(RET_K, 0, 0, 0),
            at(LD_W_ABS, 0, 0, NR),
        ]
    }

    /// seccompiler's shape for `nrs` allowed without argument checks, else
    /// trap: per call `JEQ nr; JA chain; JA next`, its chain `RET allow; RET
    /// trap`, and the default at the end.
    fn allow_list(nrs: &[u32]) -> Vec<sock_filter> {
        let mut p = head();
        for &nr in nrs {
            p.extend([
                at(JEQ_K, 0, 1, nr),
                at(JA, 0, 0, 1),
                at(JA, 0, 0, 2),
                at(RET_K, 0, 0, ALLOW),
                at(RET_K, 0, 0, TRAP),
            ]);
        }
        p.push(at(RET_K, 0, 0, TRAP));
        p
    }

    #[test]
    fn programs_not_in_seccompilers_shape_are_refused() {
        assert!(search_tree(&[]).is_err());
        let allow = at(RET_K, 0, 0, ALLOW);
        assert!(search_tree(&vec![allow.clone(); 8]).is_err());
        // A dispatch that loads something else.
        let mut p = head();
        p.extend([at(LD_W_ABS, 0, 0, 16), allow.clone()]);
        assert!(search_tree(&p).unwrap_err().contains("dispatch"), "{p:?}");
        // The same call twice.
        let mut p = head();
        p.extend([
            at(JEQ_K, 0, 1, 3),
            allow.clone(),
            at(JEQ_K, 0, 1, 3),
            allow.clone(),
            at(RET_K, 0, 0, TRAP),
        ]);
        assert!(search_tree(&p).unwrap_err().contains("twice"), "{p:?}");
    }

    #[test]
    fn two_calls_get_one_node_and_two_leaves() {
        let p = allow_list(&[3, 9]);
        let t = search_tree(&p).expect("tree");
        // One JGE, two leaves of two, the default: 6 more instructions.
        assert_eq!(t.len(), p.len() + 6);
        // JGE 9 skips the lower leaf.
        assert_eq!(t[4], at(JGE_K, 2, 0, 9));
        // The lower leaf: JEQ 3 (else to the default right after the tree),
        // JA to the original's JEQ 3 (moved down by 6).
        assert_eq!(t[5], at(JEQ_K, 0, 3, 3));
        assert_eq!(t[6 + 1 + t[6].k as usize], at(JEQ_K, 0, 1, 3));
        assert_eq!(t[7], at(JEQ_K, 0, 1, 9));
        assert_eq!(t[8 + 1 + t[8].k as usize], at(JEQ_K, 0, 1, 9));
        assert_eq!(t[9], at(RET_K, 0, 0, TRAP));
    }

    #[test]
    fn long_lists_fall_back_to_jumps_that_reach() {
        // 120 calls: a compact tree would need offsets past 255.
        let p = allow_list(&(0..120).collect::<Vec<u32>>());
        let t = search_tree(&p).expect("tree");
        assert_eq!(t.len(), p.len() + 5 * 120 - 2);
    }
}
