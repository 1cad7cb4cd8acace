package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// reader is an open object. Reads of at least BlockSize go straight to a
// ranged GET; smaller ones (Parquet issues many: footer length, footer,
// page headers) are served from aligned blocks kept in a small LRU, so a
// file costs about size/BlockSize requests instead of one per read.
// Memory is at most Blocks x BlockSize per open object.
type reader struct {
	ctx  context.Context
	b    *Backend
	l    Location
	bk   Bucket
	size int64
	etag string
	o    Options

	mu     sync.Mutex
	blocks []*block // most recently used last
	closed bool
}

type block struct {
	idx  int64
	data []byte
}

func newReader(ctx context.Context, b *Backend, l Location, bk Bucket, size int64, etag string, o Options) *reader {
	return &reader{ctx: ctx, b: b, l: l, bk: bk, size: size, etag: etag, o: o}
}

func (r *reader) Size() int64 { return r.size }

func (r *reader) Close() error {
	r.mu.Lock()
	r.closed = true
	r.blocks = nil
	r.mu.Unlock()
	return nil
}

// ReadAt implements io.ReaderAt; it is safe for concurrent use.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", r.l, off)
	}
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	var short error
	if rem := r.size - off; int64(len(p)) > rem {
		want = p[:rem]
		short = io.EOF
	}
	if len(want) >= r.o.BlockSize {
		if err := r.fetch(want, off); err != nil {
			return 0, err
		}
		return len(want), short
	}
	n := 0
	for n < len(want) {
		pos := off + int64(n)
		bs := int64(r.o.BlockSize)
		c, err := r.copyBlock(want[n:], pos/bs, pos-(pos/bs)*bs)
		if err != nil {
			return n, err
		}
		n += c
	}
	return n, short
}

// copyBlock copies block idx's bytes from within into dst, from the cache
// or after one ranged GET. Copies happen under the lock, so an evicted
// block's buffer is never read by anyone while it is refilled.
func (r *reader) copyBlock(dst []byte, idx, within int64) (int, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, fmt.Errorf("read %s: file is closed", r.l)
	}
	for i, b := range r.blocks {
		if b.idx == idx {
			copy(r.blocks[i:], r.blocks[i+1:])
			r.blocks[len(r.blocks)-1] = b
			n := copy(dst, b.data[within:])
			r.mu.Unlock()
			return n, nil
		}
	}
	var buf []byte
	if len(r.blocks) >= r.o.Blocks {
		buf = r.blocks[0].data[:0]
		r.blocks = append(r.blocks[:0], r.blocks[1:]...)
	}
	r.mu.Unlock()

	bs := int64(r.o.BlockSize)
	start := idx * bs
	n := min(bs, r.size-start)
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if err := r.fetch(buf, start); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed && len(r.blocks) < r.o.Blocks {
		r.blocks = append(r.blocks, &block{idx: idx, data: buf})
	}
	return copy(dst, buf[within:]), nil
}

// fetch fills p from off with one ranged GET, retrying transient errors
// including a connection dropped mid-body.
func (r *reader) fetch(p []byte, off int64) error {
	err := r.o.Retry.do(r.ctx, func() error {
		body, err := r.bk.GetRange(r.ctx, r.l.Key, r.etag, off, int64(len(p)))
		if err != nil {
			return err
		}
		defer body.Close()
		if _, err := io.ReadFull(body, p); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %v", errShortBody, err)
			}
			return err
		}
		return nil
	})
	if err != nil {
		if kindOf(err) == KindNotFound || isPrecondition(err) {
			return &Error{Op: "read", Loc: r.l.String(), Bucket: r.l.Bucket, Key: r.l.Key, Kind: KindPermanent, Err: err,
				Hint: "the object was deleted or replaced while being read; re-run the bundle"}
		}
		return r.b.wrap("read", r.l, err)
	}
	return nil
}

func isPrecondition(err error) bool {
	var se *ServiceError
	return errors.As(err, &se) && (se.Status == 412 || se.Code == "PreconditionFailed")
}
