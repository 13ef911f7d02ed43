"""The CUDA caching allocator's rules, replayed on sizes: which segments a sequence of mallocs and frees reserves.

Source: pytorch/pytorch c10/cuda/CUDACachingAllocator.cpp, DeviceCachingAllocator, as stored in the code index at
commit 001074d25084fdb87a799823e395a50f5ec044d3 (the version of torch 2.13.0, git cf30153c, is not stored there;
the constants and settings are checked against the 2.13 headers, see profiler.allocator.conf). Each rule below
names the function it replays and quotes the line that decides it:
- `round_size`: "kMinBlockSize * ((size + kMinBlockSize - 1) / kMinBlockSize)", or with roundup_power2_divisions
  `roundup_power2_next_division` for sizes above kMinBlockSize * divisions.
- `get_pool`: "if (size <= kSmallSize) return small_blocks; else return large_blocks".
- `get_allocation_size`: "size <= kSmallSize -> kSmallBuffer; size < kMinLargeAlloc -> kLargeBuffer; else
  kRoundLarge * ((size + kRoundLarge - 1) / kRoundLarge)" (2.13: kLargeBuffer = large_segment_size, 20 MiB).
- `get_free_block`: best fit "pool.blocks.lower_bound(&p.search_key)" over (stream, size, address); "Do not return
  an oversized block for a large request" (size < max_split_size and block >= max_split_size) and "Allow oversized
  block size to be rounded up but within a limit" (block >= size + max_non_split_rounding: 2.13's name for the
  kLargeBuffer of that commit); with expandable segments the block that can grow is passed over for a larger one
  ("expandable_size(*next) < expandable_size(*it)").
- `should_split`: "if (block->pool->is_small || expandable_segments()) return remaining >= kMinBlockSize; else
  return (size < max_split_size()) && (remaining > kSmallSize)".
- `malloc`: get_free_block, else garbage_collect_cached_blocks (only with a memory fraction set and a threshold),
  then "alloc_block(params, false) || (release_available_cached_blocks(params) && alloc_block(params, false)) ||
  (release_cached_blocks() && alloc_block(params, true))", else OutOfMemoryError.
- `alloc_block`: "set_fraction && total_allocated_memory + size > allowed_memory_maximum" fails; expandable:
  try_allocate_expandable_block; else cudaMalloc(alloc_size) (fails past the device capacity here).
- `free` / `free_block` / `try_merge_blocks`: a block used on other streams (record_stream) waits for its events
  ("insert_events"), else it merges with free neighbours of the same mapped state and returns to its pool.
- `release_available_cached_blocks`: with max_split_size set, frees one oversize cached block >= the request, or
  the largest oversize ones until their sum reaches it. `release_cached_blocks`: synchronize all events, then
  `release_blocks` (large pool, then small): cudaFree every unsplit free block; expandable: `unmap_block` the whole
  pages inside each free block.
- Expandable segments (Note [Expandable Segments], `find_expandable_block`, `map_block`,
  `try_allocate_expandable_block`): one segment per stream and pool with 1.125 x the device memory of address
  space; pages of 2 MiB (small pool) or 20 MiB (large) are mapped at the lowest address that fits, merging with the
  free block before them; reserved counts mapped pages only ("increase_stat(stats.reserved_bytes[...],
  mapped_range.size)").
- `garbage_collect_cached_blocks`: past threshold x allowed memory, free unsplit large-pool blocks of at least the
  average age (get_free_block calls since the block was cached) until the excess is reclaimed.

Streams: each block belongs to the stream it was allocated on and is reused only there. A block freed after
`record_stream` onto another stream completes its free `event_lag` mallocs later (the replay has no GPU clock: an
event completes when a later malloc's process_events sees it); release_cached_blocks completes every one.
Addresses are synthetic (segments in allocation order), so ties between equal free blocks may break otherwise than
on a GPU. CUDA graphs' private pools are not modelled.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from profiler.allocator.conf import AllocatorConf

K_MIN_BLOCK = 512  # kMinBlockSize
K_SMALL_SIZE = 2**20  # kSmallSize: largest small request
K_SMALL_BUFFER = 2 * 2**20  # kSmallBuffer: small segments; the small pool's expandable page
K_LARGE_BUFFER = 20 * 2**20  # kLargeBuffer / large_segment_size: 1-10 MiB requests; the large expandable page
K_MIN_LARGE_ALLOC = 10 * 2**20  # kMinLargeAlloc
K_ROUND_LARGE = 2 * 2**20  # kRoundLarge
_GAP = 1 << 30  # between synthetic segments, so no two segments touch
_NO_LIMIT = 1 << 62


class AllocatorOutOfMemory(MemoryError):
    """The replay could not find or map memory within the device capacity, even after freeing its cache."""

    def __init__(self, requested: int, reserved: int, allocated: int, capacity: int | None):
        self.requested, self.reserved, self.allocated, self.capacity = requested, reserved, allocated, capacity
        super().__init__(f"replayed CUDA out of memory: tried to allocate {requested} bytes with {reserved} reserved "
                         f"({allocated} allocated) of {capacity} bytes")


class Block:
    """A piece of a segment: free, allocated, waiting for events, or (expandable) unmapped address space."""

    __slots__ = ("addr", "size", "stream", "small", "prev", "next", "allocated", "mapped", "seg", "events",
                 "uses", "gc_base", "requested")

    def __init__(self, addr: int, size: int, stream: int, small: bool, seg: _Expandable | None = None,
                 mapped: bool = True):
        self.addr, self.size, self.stream, self.small, self.seg, self.mapped = addr, size, stream, small, seg, mapped
        self.prev: Block | None = None
        self.next: Block | None = None
        self.allocated = False
        self.events = 0
        self.uses: set[int] | None = None
        self.gc_base = 0
        self.requested = 0

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def __repr__(self) -> str:
        state = "alloc" if self.allocated else ("free" if self.mapped else "unmapped")
        return f"Block({self.addr:#x}, {self.size}, {state}, stream {self.stream})"


class _Expandable:
    __slots__ = ("base", "page")

    def __init__(self, base: int, page: int):
        self.base, self.page = base, page


class _Pool:
    """Free blocks of one pool (small or large): per stream a sorted list of (size, addr); unmapped ones by addr."""

    __slots__ = ("small", "free", "unmapped", "calls")

    def __init__(self, small: bool):
        self.small = small
        self.free: dict[int, list[tuple[int, int]]] = {}
        self.unmapped: dict[int, list[int]] = {}
        self.calls = 0  # get_free_blocks_call_count (garbage collection ages)


class CachingAllocator:
    """Replays DeviceCachingAllocator on sizes. `capacity`: bytes the allocator may reserve (device memory less the
    CUDA context and other processes); None = unlimited. `device_total`: the GPU's memory (memory fraction and
    expandable address space); `event_lag`: mallocs that still see a cross-stream free pending (0: the next malloc
    completes it; 1, the default: the one after)."""

    def __init__(self, conf: AllocatorConf | None = None, capacity: int | None = None,
                 device_total: int | None = None, event_lag: int = 1):
        self.conf = conf or AllocatorConf()
        self.capacity = capacity
        total = device_total or capacity
        frac = self.conf.per_process_memory_fraction
        self.fraction_limit = int(frac * total) if frac is not None and total else None  # allowed_memory_maximum
        self.gc_on = self.fraction_limit is not None and self.conf.garbage_collection_threshold > 0
        self.vspace = (total + total // 8) if total else 1 << 46  # expandable address space per segment
        self.max_split = self.conf.max_split_size or _NO_LIMIT
        self.event_lag = max(0, event_lag)
        self.small_pool, self.large_pool = _Pool(True), _Pool(False)
        self._free: dict[int, Block] = {}  # addr -> free mapped block
        self._unmapped: dict[int, Block] = {}  # addr -> unmapped block
        self._pending: list[list] = []  # [mallocs left, block] for frees waiting on events
        self._next_addr = 1 << 32
        self.allocated = self.peak_allocated = 0  # allocated_bytes: rounded block sizes
        self.reserved = self.peak_reserved = 0  # reserved_bytes: segments (expandable: mapped pages)
        self._segs: dict[int, int] = {}  # base -> size of each cudaMalloc segment
        self.num_alloc_retries = 0
        self.num_ooms = 0

    # ---- public ---------------------------------------------------------------------------------------------
    def malloc(self, size: int, stream: int = 0) -> Block:
        """DeviceCachingAllocator::malloc; raises AllocatorOutOfMemory."""
        if self._pending:
            self._process_events()
        rsize = self.round_size(size)
        pool = self.small_pool if rsize <= K_SMALL_SIZE else self.large_pool
        block = self._get_free_block(pool, rsize, stream)
        if block is None:
            alloc_size = self.allocation_size(rsize)
            if self.gc_on:
                self._garbage_collect()
            block = self._alloc_block(pool, rsize, alloc_size, stream)
            if block is None and self._release_available(pool, rsize, stream):
                block = self._alloc_block(pool, rsize, alloc_size, stream)
            if block is None:
                self._release_cached()
                self.num_alloc_retries += 1
                block = self._alloc_block(pool, rsize, alloc_size, stream)
            if block is None:
                self.num_ooms += 1
                raise AllocatorOutOfMemory(alloc_size, self.reserved, self.allocated, self.capacity)
        if self._should_split(block, rsize):
            block = self._split(block, rsize, pool)
        block.allocated = True
        block.requested = size
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        return block

    def record_stream(self, block: Block, stream: int) -> None:
        """recordStream: a use on another stream delays the block's free until that stream's event completes."""
        if stream != block.stream:
            if block.uses is None:
                block.uses = set()
            block.uses.add(stream)

    def free(self, block: Block) -> None:
        """DeviceCachingAllocator::free."""
        block.allocated = False
        self.allocated -= block.size
        if block.uses:
            block.events = len(block.uses)  # insert_events: one event per stream used
            block.uses = None
            self._pending.append([self.event_lag, block])
        else:
            self._free_block(block)

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache(): release_cached_blocks."""
        self._release_cached()

    def reset_peak(self) -> None:
        self.peak_reserved, self.peak_allocated = self.reserved, self.allocated

    def round_size(self, size: int) -> int:
        """round_size: 512-byte multiples, or the next power-of-2 division where roundup_power2_divisions asks."""
        if size < K_MIN_BLOCK:
            return K_MIN_BLOCK
        divisions = self.conf.divisions(size)
        if divisions > 1 and size > K_MIN_BLOCK * divisions:
            return roundup_power2_next_division(size, divisions)
        return K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)

    @staticmethod
    def allocation_size(size: int) -> int:
        """get_allocation_size: the segment a cudaMalloc gets for a (rounded) request."""
        if size <= K_SMALL_SIZE:
            return K_SMALL_BUFFER
        if size < K_MIN_LARGE_ALLOC:
            return K_LARGE_BUFFER
        return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)

    def segment_sizes(self) -> list[int]:
        """Sizes of the cudaMalloc segments held now, ascending (expandable segments: see `reserved`)."""
        return sorted(self._segs.values())

    # ---- free lists -----------------------------------------------------------------------------------------
    def _pool(self, block: Block) -> _Pool:
        return self.small_pool if block.small else self.large_pool

    def _insert_free(self, block: Block) -> None:
        pool = self._pool(block)
        block.gc_base = pool.calls
        insort(pool.free.setdefault(block.stream, []), (block.size, block.addr))
        self._free[block.addr] = block

    def _remove_free(self, block: Block) -> None:
        lst = self._pool(block).free[block.stream]
        del lst[bisect_left(lst, (block.size, block.addr))]
        del self._free[block.addr]

    def _insert_unmapped(self, block: Block) -> None:
        insort(self._pool(block).unmapped.setdefault(block.stream, []), block.addr)
        self._unmapped[block.addr] = block

    def _remove_unmapped(self, block: Block) -> None:
        lst = self._pool(block).unmapped[block.stream]
        del lst[bisect_left(lst, block.addr)]
        del self._unmapped[block.addr]

    @staticmethod
    def _expandable_size(b: Block) -> int:
        nxt = b.next
        return b.size + (nxt.size if nxt is not None and not nxt.mapped else 0)

    def _get_free_block(self, pool: _Pool, size: int, stream: int) -> Block | None:
        if self.gc_on:
            pool.calls += 1
        lst = pool.free.get(stream)
        if not lst:
            return None
        i = bisect_left(lst, (size, 0))
        if i == len(lst):
            return None
        if self.conf.expandable_segments:
            b = self._free[lst[i][1]]
            while b.seg is not None and i + 1 < len(lst):
                nb = self._free[lst[i + 1][1]]
                if self._expandable_size(nb) >= self._expandable_size(b):
                    break
                i, b = i + 1, nb
        bsize, addr = lst[i]
        if size < self.max_split <= bsize:
            return None  # "Do not return an oversized block for a large request"
        if size >= self.max_split and bsize >= size + self.conf.max_non_split_rounding:
            return None  # "Allow oversized block size to be rounded up but within a limit"
        del lst[i]
        return self._free.pop(addr)

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.conf.expandable_segments:
            return remaining >= K_MIN_BLOCK
        return size < self.max_split and remaining > K_SMALL_SIZE

    def _split(self, block: Block, size: int, pool: _Pool) -> Block:
        """alloc_found_block: the front `size` bytes become the allocated block, the rest goes back to the pool."""
        new = Block(block.addr, size, block.stream, block.small, block.seg)
        new.prev = block.prev
        if new.prev is not None:
            new.prev.next = new
        new.next = block
        block.prev = new
        block.addr += size
        block.size -= size
        self._insert_free(block)
        return new

    def _free_block(self, block: Block) -> None:
        for cand in (block.prev, block.next):
            self._try_merge(block, cand)
        self._insert_free(block)

    def _try_merge(self, dst: Block, src: Block | None) -> int:
        """try_merge_blocks: absorb a free neighbour of the same mapped state (dst is in no free list)."""
        if src is None or src.allocated or src.events or src.mapped != dst.mapped:
            return 0
        if src.mapped:
            self._remove_free(src)
        else:
            self._remove_unmapped(src)
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    def _process_events(self) -> None:
        keep = []
        for item in self._pending:
            if item[0] <= 0:
                item[1].events = 0
                self._free_block(item[1])
            else:
                item[0] -= 1
                keep.append(item)
        self._pending = keep

    # ---- segments -------------------------------------------------------------------------------------------
    def _grow_reserved(self, n: int) -> None:
        self.reserved += n
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved

    def _alloc_block(self, pool: _Pool, size: int, alloc_size: int, stream: int) -> Block | None:
        if self.fraction_limit is not None and self.reserved + alloc_size > self.fraction_limit:
            return None
        if self.conf.expandable_segments:
            return self._try_allocate_expandable(pool, size, stream)
        if self.capacity is not None and self.reserved + alloc_size > self.capacity:
            return None  # cudaMalloc: cudaErrorMemoryAllocation
        block = Block(self._next_addr, alloc_size, stream, pool.small)
        self._next_addr += alloc_size + _GAP
        self._segs[block.addr] = alloc_size
        self._grow_reserved(alloc_size)
        return block

    def _release_block(self, block: Block) -> None:
        """release_block: cudaFree an unsplit cached block."""
        self._remove_free(block)
        self.reserved -= block.size
        del self._segs[block.addr]

    def _release_available(self, pool: _Pool, size: int, stream: int) -> bool:
        """release_available_cached_blocks: only with max_split_size set; frees oversize cached blocks."""
        if self.conf.max_split_size is None:
            return False
        key = max(size, self.max_split)
        lst = pool.free.get(stream) or []
        i = bisect_left(lst, (key, 0))
        if i < len(lst):
            self._release_block(self._free[lst[i][1]])
            return True
        released, j, victims = 0, i - 1, []
        while released < key and j >= 0 and lst[j][0] >= self.max_split:
            victims.append(self._free[lst[j][1]])
            released += lst[j][0]
            j -= 1
        for b in victims:
            self._release_block(b)
        return released >= key

    def _release_cached(self) -> None:
        """release_cached_blocks: complete every pending free, then release_blocks(large), release_blocks(small)."""
        for _, b in self._pending:
            b.events = 0
            self._free_block(b)
        self._pending = []
        for pool in (self.large_pool, self.small_pool):
            blocks = [self._free[a] for lst in pool.free.values() for _, a in lst]
            to_unmap = []
            for b in blocks:
                if b.seg is not None:
                    to_unmap.append(b)
                elif not b.is_split():
                    self._release_block(b)
            for b in to_unmap:
                self._unmap_block(b)
                if not b.mapped and not b.is_split():  # release_expandable_segment: all address space free
                    self._remove_unmapped(b)

    # ---- expandable segments --------------------------------------------------------------------------------
    @staticmethod
    def _allocatable(b: Block | None) -> bool:
        return b is not None and not b.allocated and b.events == 0

    def _find_expandable_block(self, pool: _Pool, stream: int, size: int) -> Block:
        for addr in list(pool.unmapped.get(stream, [])):
            c = self._unmapped[addr]
            if self._allocatable(c.prev):
                c = c.prev
            total, b = 0, c
            while total < size and self._allocatable(b):
                total += b.size
                b = b.next
            if total >= size:
                return c
        page = K_SMALL_BUFFER if pool.small else K_LARGE_BUFFER
        vsize = -(-self.vspace // page) * page
        seg = _Expandable(self._next_addr, page)
        self._next_addr += vsize + _GAP
        block = Block(seg.base, vsize, stream, pool.small, seg, mapped=False)
        self._insert_unmapped(block)
        return block

    def _map_block(self, to_map: Block, size: int) -> bool:
        page = to_map.seg.page
        mapped = -(-size // page) * page  # ExpandableSegment::map maps whole pages
        if self.capacity is not None and self.reserved + mapped > self.capacity:
            return False  # cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY
        self._remove_unmapped(to_map)
        to_map.mapped = True
        if mapped < to_map.size:
            rest = Block(to_map.addr + mapped, to_map.size - mapped, to_map.stream, to_map.small, to_map.seg, False)
            rest.prev, rest.next = to_map, to_map.next
            if to_map.next is not None:
                to_map.next.prev = rest
            to_map.next = rest
            self._insert_unmapped(rest)
            to_map.size = mapped
        self._try_merge(to_map, to_map.prev)
        self._try_merge(to_map, to_map.next)
        self._insert_free(to_map)
        self._grow_reserved(mapped)
        return True

    def _try_allocate_expandable(self, pool: _Pool, size: int, stream: int) -> Block | None:
        c = self._find_expandable_block(pool, stream, size)
        if not c.mapped and not self._map_block(c, min(c.size, size)):
            return None
        while c.size < size:
            nxt = c.next
            if not self._map_block(nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt
        self._remove_free(c)
        return c

    def _unmap_block(self, block: Block) -> None:
        """unmap_block: return the whole pages inside a free block to the driver."""
        seg = block.seg
        page = seg.page
        begin = -(-(block.addr - seg.base) // page)
        end = (block.addr + block.size - seg.base) // page
        if begin >= end:
            return
        self._remove_free(block)
        start = seg.base + begin * page
        size = (end - begin) * page
        before = start - block.addr
        after = block.size - before - size
        if before > 0:
            b = Block(block.addr, before, block.stream, block.small, seg)
            b.prev, b.next = block.prev, block
            if block.prev is not None:
                block.prev.next = b
            block.prev = b
            self._insert_free(b)
        if after > 0:
            a = Block(start + size, after, block.stream, block.small, seg)
            a.prev, a.next = block, block.next
            if block.next is not None:
                block.next.prev = a
            block.next = a
            self._insert_free(a)
        block.addr, block.size, block.mapped = start, size, False
        self._try_merge(block, block.prev)
        self._try_merge(block, block.next)
        self._insert_unmapped(block)
        self.reserved -= size

    # ---- garbage collection ---------------------------------------------------------------------------------
    def _garbage_collect(self) -> None:
        """garbage_collect_cached_blocks."""
        threshold = int(self.conf.garbage_collection_threshold * self.fraction_limit)
        if self.reserved <= threshold:
            return
        target = self.reserved - threshold
        pool = self.large_pool
        cands = [self._free[a] for lst in pool.free.values() for _, a in lst if not self._free[a].is_split()]
        if not cands:
            return
        total_age = sum(pool.calls - b.gc_base for b in cands)
        count = len(cands)
        reclaimed, freed = 0, True
        while reclaimed < target and freed and count > 0:
            threshold_age = total_age / count
            freed = False
            for b in sorted((self._free[a] for lst in pool.free.values() for _, a in lst),
                            key=lambda x: (x.stream, x.size, x.addr)):
                if not b.is_split() and pool.calls - b.gc_base >= threshold_age:
                    freed = True
                    reclaimed += b.size
                    total_age -= pool.calls - b.gc_base
                    count -= 1
                    self._release_block(b)


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """roundup_power2_next_division: e.g. 1200 with 4 divisions of [1024, 2048) -> 1280."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    low = size & ~(step - 1)
    return size if low == size else low + step
