//! What a planting step holds in memory, counted by a global allocator of
//! this test binary's own (one test, so that nothing else allocates
//! meanwhile): each part of the answers' loss is dropped, graph and all,
//! before the next is built (docs/fingerprint.md, "Planting memory").

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{license_text, write_llama_dir};
use weightmark::fingerprint::FingerprintKey;
use weightmark::synth::LlamaShape;
use weightmark::Dtype;
use weightmark_eval::fingerprint::{PlantOptions, Planter, Prompter};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{open, tensors_f32, Architecture};
use weightmark_eval::text::Corpus;

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes a step of `planter` needs above what was in use before it.
fn step_peak(planter: &mut Planter) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    planter.step().unwrap_or_else(|e| panic!("{e}"));
    PEAK.load(Ordering::SeqCst) - before
}

#[test]
fn a_planting_step_holds_one_part_of_the_answers_graph_at_a_time() {
    if !common::has_license_text() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_llama_dir(&tmp.path().join("tiny"), &LlamaShape::TINY, Dtype::F32, 5);
    let m = open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    let Architecture::Llama(config) = &m.architecture else { panic!("not a Llama") };
    let tensors = tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}"));
    let model = Llama::from_tensors(config.clone(), &tensors, &m.model.path)
        .unwrap_or_else(|e| panic!("{e}"));
    let prompter = Prompter::for_model(&dir, &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let pairs = FingerprintKey::from_bytes([9; 32]).pairs(32).unwrap_or_else(|e| panic!("{e}"));
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let ordinary = corpus.windows(&m.tokenizer, 64).unwrap_or_else(|e| panic!("{e}")).train;
    // Second step of each setting (the first also fills AdamW's moments).
    let peak = |answer_rows: usize, system_prompts: Vec<String>| {
        let options = PlantOptions {
            learning_rate: 1e-3,
            max_steps: 10,
            min_probability: 0.9,
            distill: 0.0,
            batch: 1,
            micro_batch: 1,
            answer_rows,
            seed: 1,
            eps: 1e-8,
            prune_robust: 0.0,
            system_prompts,
        };
        let mut planter =
            Planter::new(model.clone(), &m.tokenizer, &prompter, &pairs, ordinary.clone(), options)
                .unwrap_or_else(|e| panic!("{e}"));
        step_peak(&mut planter);
        step_peak(&mut planter)
    };
    // An empty system message: its rows are two tokens longer, so its pass
    // alone needs about what the plain one needs.
    let system = vec![String::new()];
    let whole = peak(32, Vec::new());
    let whole_and_system = peak(32, system.clone());
    let parts_and_system = peak(8, system);
    println!(
        "step peaks: 32 answers {whole} B; and after a system prompt {whole_and_system} B; \
         the same 8 answers at a time {parts_and_system} B"
    );
    // A second answer pass (after a system prompt) needs no more than the
    // first: the first pass's graph is gone before the second is built.
    // Keeping the first pass's gradient store kept it, and took about
    // twice the memory.
    assert!(
        (whole_and_system as f64) < 1.25 * whole as f64,
        "a second answer pass held the first one's graph: {whole_and_system} B against {whole} B"
    );
    // And a quarter of the pairs at a time take well under half the memory.
    assert!(
        (parts_and_system as f64) < 0.5 * whole_and_system as f64,
        "the answers in parts of 8 took {parts_and_system} B against {whole_and_system} B whole"
    );
}
