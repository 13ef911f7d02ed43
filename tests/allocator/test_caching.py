"""Each caching-allocator rule on a hand-made sequence. The expected segments are worked out in the comments from
the rule as c10/cuda/CUDACachingAllocator.cpp states it (quoted in profiler/allocator/caching.py), not read off
the model's output."""

from __future__ import annotations

import pytest

from profiler.allocator.caching import AllocatorOutOfMemory, CachingAllocator, roundup_power2_next_division
from profiler.allocator.conf import parse_conf

MIB = 2**20


def test_requests_round_up_to_512_bytes_and_small_ones_share_a_2_mib_segment():
    a = CachingAllocator()
    b1, b2 = a.malloc(1), a.malloc(513)
    assert (b1.size, b2.size) == (512, 1024)  # round_size: multiples of kMinBlockSize
    assert a.allocated == 1536  # allocated_bytes counts the rounded block sizes
    assert a.segment_sizes() == [2 * MIB]  # both <= kSmallSize: one kSmallBuffer segment, split twice


def test_one_mib_is_small_and_one_mib_plus_one_byte_is_large():
    a = CachingAllocator()
    a.malloc(MIB)  # size <= kSmallSize -> small pool, kSmallBuffer (2 MiB)
    a.malloc(MIB + 1)  # rounded to 1 MiB + 512 > kSmallSize -> large pool; < kMinLargeAlloc -> kLargeBuffer (20 MiB)
    assert a.segment_sizes() == [2 * MIB, 20 * MIB]
    assert a.reserved == 22 * MIB


def test_requests_of_1_to_10_mib_pack_into_20_mib_segments():
    a = CachingAllocator()
    for _ in range(6):  # 6 x 3 MiB = 18 MiB: each split leaves > kSmallSize, so all six share one 20 MiB segment
        a.malloc(3 * MIB)
    assert a.segment_sizes() == [20 * MIB]
    a.malloc(3 * MIB)  # 2 MiB left: too small, a second kLargeBuffer
    assert a.segment_sizes() == [20 * MIB, 20 * MIB]


def test_requests_of_10_mib_and_more_get_their_own_segment_rounded_to_2_mib():
    a = CachingAllocator()
    a.malloc(10 * MIB)  # not < kMinLargeAlloc: kRoundLarge multiple, exactly 10 MiB
    b = a.malloc(11 * MIB + 1)  # 11 MiB + 512 after round_size -> 12 MiB segment
    assert a.segment_sizes() == [10 * MIB, 12 * MIB]
    assert b.size == 12 * MIB  # remaining 1.5 MiB - 512 is not > kSmallSize: large blocks are not split
    assert a.allocated == 22 * MIB


def test_large_blocks_split_only_when_more_than_1_mib_remains_small_ones_when_512_bytes_do():
    a = CachingAllocator()
    big = a.malloc(12 * MIB)
    a.free(big)
    b = a.malloc(5 * MIB)  # the cached 12 MiB block: remaining 7 MiB > kSmallSize -> split
    assert b.size == 5 * MIB and a.segment_sizes() == [12 * MIB]
    c = a.malloc(6 * MIB + 1)  # the 7 MiB remainder: 6 MiB + 512 leaves 1 MiB - 512, not > kSmallSize: whole
    assert c.size == 7 * MIB and a.reserved == 12 * MIB
    a.malloc(MIB)  # small pool: a 2 MiB segment, 1 MiB left
    s = a.malloc(MIB - 512)  # remaining 512 >= kMinBlockSize -> split
    assert s.size == MIB - 512
    assert a.malloc(512).addr == s.addr + s.size  # the 512-byte remainder serves the next small request
    assert a.reserved == 14 * MIB


def test_best_fit_takes_the_smallest_free_block_then_the_lowest_address():
    a = CachingAllocator()
    x, _, z, _ = a.malloc(4 * MIB), a.malloc(2 * MIB), a.malloc(6 * MIB), a.malloc(2 * MIB)  # 14 of 20 MiB
    a.free(x)  # free: 4 MiB (first), 6 MiB (z), 6 MiB (the segment's tail)
    a.free(z)
    assert a.malloc(3 * MIB + MIB // 2).addr == x.addr  # smallest block that fits
    assert a.malloc(5 * MIB).addr == z.addr  # two 6 MiB blocks: the lower address
    assert a.segment_sizes() == [20 * MIB]


def test_freed_neighbours_merge_back_into_one_block():
    a = CachingAllocator()
    x, y, z = a.malloc(5 * MIB), a.malloc(5 * MIB), a.malloc(5 * MIB)
    for b in (x, z, y):  # z merges with the 5 MiB tail, y with both sides
        a.free(b)
    w = a.malloc(19 * MIB)  # only a merged 20 MiB block holds 19 MiB; 1 MiB left is not > kSmallSize
    assert w.size == 20 * MIB and a.segment_sizes() == [20 * MIB]
    a.free(w)
    a.empty_cache()  # the whole segment is one free unsplit block: cudaFree
    assert a.reserved == 0


def test_max_split_size_blocks_are_not_split_nor_given_to_small_requests():
    a = CachingAllocator(parse_conf("max_split_size_mb:40"))
    a.free(a.malloc(50 * MIB))  # cached oversize (>= 40 MiB) block
    b = a.malloc(30 * MIB)  # 30 < max_split and the block >= max_split: "Do not return an oversized block"
    assert a.segment_sizes() == [30 * MIB, 50 * MIB]
    a.free(b)
    c = a.malloc(45 * MIB)  # 45 >= max_split: the 50 MiB block (< 45 + 20) is used whole, never split
    assert c.size == 50 * MIB and a.reserved == 80 * MIB


def test_an_oversize_block_serves_only_requests_within_max_non_split_rounding():
    a = CachingAllocator(parse_conf("max_split_size_mb:40"))
    a.free(a.malloc(70 * MIB))
    a.malloc(45 * MIB)  # 70 >= 45 + 20 (max_non_split_rounding default): a new 46 MiB segment
    assert a.segment_sizes() == [46 * MIB, 70 * MIB]
    b = CachingAllocator(parse_conf("max_split_size_mb:40,max_non_split_rounding_mb:30"))
    b.free(b.malloc(70 * MIB))
    assert b.malloc(45 * MIB).size == 70 * MIB and b.reserved == 70 * MIB  # 70 < 45 + 30: reused


def test_past_the_capacity_oversize_cached_blocks_are_released_first():
    a = CachingAllocator(parse_conf("max_split_size_mb:40"), capacity=100 * MIB)
    a.free(a.malloc(70 * MIB))
    a.malloc(45 * MIB)  # 70 + 46 > 100: release_available_cached_blocks frees the 70 MiB block, then cudaMalloc
    assert a.segment_sizes() == [46 * MIB] and a.num_alloc_retries == 0


def test_past_the_capacity_every_unsplit_cached_segment_is_freed_and_the_malloc_retried():
    a = CachingAllocator(capacity=30 * MIB)
    a.free(a.malloc(20 * MIB))
    a.malloc(22 * MIB)  # 20 + 22 > 30: release_cached_blocks, then the retry fits
    assert a.segment_sizes() == [22 * MIB] and a.num_alloc_retries == 1


def test_a_split_segment_cannot_be_freed_so_the_malloc_runs_out_of_memory():
    a = CachingAllocator(capacity=30 * MIB)
    a.malloc(3 * MIB)  # a 20 MiB segment, 17 MiB of it free but split off a live block
    with pytest.raises(AllocatorOutOfMemory):
        a.malloc(18 * MIB)  # 17 MiB free is too small; 20 + 18 > 30 and nothing unsplit to free
    assert a.num_ooms == 1 and a.reserved == 20 * MIB


def test_blocks_are_reused_only_on_the_stream_they_were_allocated_on():
    a = CachingAllocator()
    a.free(a.malloc(3 * MIB, stream=0))
    a.malloc(3 * MIB, stream=1)  # the cached 20 MiB segment belongs to stream 0
    assert a.segment_sizes() == [20 * MIB, 20 * MIB]


def test_a_block_used_on_another_stream_waits_for_its_event():
    a = CachingAllocator(event_lag=1)
    x = a.malloc(3 * MIB)
    x_addr = x.addr
    a.record_stream(x, 1)
    a.free(x)  # insert_events: not back in the pool yet
    y = a.malloc(3 * MIB)  # the event is still pending: y comes from the remainder after x
    assert y.addr == x_addr + 3 * MIB
    z = a.malloc(3 * MIB)  # process_events has completed x's event: x's block is the best fit again
    assert z.addr == x_addr and a.reserved == 20 * MIB


def test_expandable_segments_map_20_mib_pages_instead_of_new_segments():
    a = CachingAllocator(parse_conf("expandable_segments:True"))
    a.malloc(3 * MIB)  # maps one 20 MiB page of the large pool's segment; the rest splits off (>= 512 bytes)
    assert a.reserved == 20 * MIB
    b = a.malloc(30 * MIB)  # 17 MiB free before the unmapped tail + 1 more page = 37 MiB, split to 30
    assert a.reserved == 40 * MIB and b.size == 30 * MIB  # without expandable segments: 20 + 30 = 50 MiB
    s = [a.malloc(1000) for _ in range(3)]  # small pool: its own segment, 2 MiB pages
    assert a.reserved == 42 * MIB and s[1].addr == s[0].addr + 1024


def test_expandable_best_fit_passes_over_the_block_that_can_grow():
    a = CachingAllocator(parse_conf("expandable_segments:True"))
    x = a.malloc(8 * MIB)
    x_addr = x.addr
    a.malloc(7 * MIB)  # free now: 5 MiB before the unmapped tail
    a.free(x)  # and 8 MiB at the start
    # lower_bound finds the 5 MiB block; its expandable size (with the unmapped tail) is larger than the 8 MiB
    # block's, so get_free_block moves on to the 8 MiB block
    assert a.malloc(4 * MIB).addr == x_addr


def test_expandable_segments_return_their_free_pages_on_empty_cache():
    a = CachingAllocator(parse_conf("expandable_segments:True"))
    blocks = [a.malloc(30 * MIB), a.malloc(3 * MIB)]  # 33 MiB in 2 pages of 20 MiB
    assert a.reserved == 40 * MIB
    a.free(blocks[0])
    a.empty_cache()  # the block's pages strictly inside [0, 30 MiB): page 0 only (page 1 holds the live 3 MiB)
    assert a.reserved == 20 * MIB
    a.free(blocks[1])
    a.empty_cache()
    assert a.reserved == 0


def test_garbage_collection_frees_old_cached_blocks_before_a_new_segment():
    conf = parse_conf("garbage_collection_threshold:0.4,per_process_memory_fraction:0.5")
    a = CachingAllocator(conf, device_total=200 * MIB)  # allowed 100 MiB; collect above 40 MiB
    a.free(a.malloc(40 * MIB))
    a.free(a.malloc(50 * MIB))
    a.malloc(52 * MIB)  # collects both cached blocks (90 > 40 MiB) before cudaMalloc: no retry needed
    assert a.segment_sizes() == [52 * MIB] and a.num_alloc_retries == 0
    b = CachingAllocator(parse_conf("per_process_memory_fraction:0.5"), device_total=200 * MIB)
    b.free(b.malloc(40 * MIB))
    b.free(b.malloc(50 * MIB))
    b.malloc(52 * MIB)  # no collection: 90 + 52 > 100 allowed, so the cache is freed by the retry instead
    assert b.segment_sizes() == [52 * MIB] and b.num_alloc_retries == 1


def test_roundup_power2_divisions():
    assert roundup_power2_next_division(1200, 4) == 1280  # the example in the source's comment
    plain, div4 = CachingAllocator(), CachingAllocator(parse_conf("roundup_power2_divisions:4"))
    assert plain.malloc(9000).size == 9216  # 512-byte multiple
    assert div4.malloc(9000).size == 10240  # [8192, 16384) in 4 steps of 2048
    assert div4.malloc(1200).size == 1536  # not > kMinBlockSize x 4: plain rounding
