package objstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// writer buffers one part at a time. An object that fits in one part is
// sent with a single PUT on Commit; a larger one becomes a multipart
// upload whose parts go up while the caller keeps writing, at most
// Concurrency at once. Memory is bounded by (Concurrency+1) x PartSize.
// The object appears under its key only when Commit completes the upload,
// which the store makes atomic; Abort (or a crash) leaves nothing visible.
type writer struct {
	ctx context.Context
	b   *Backend
	l   Location
	bk  Bucket
	o   Options
	// meta is the object's user metadata (CreateObject), nil for none.
	meta map[string]string

	buf      []byte
	free     chan []byte // part buffers not in flight, at most Concurrency+1 ever made
	made     int
	sem      chan struct{}
	wg       sync.WaitGroup
	uploadID string
	next     int
	total    int64

	mu    sync.Mutex
	parts []Part
	err   error
	done  bool
}

func newWriter(ctx context.Context, b *Backend, l Location, bk Bucket, o Options) *writer {
	return &writer{ctx: ctx, b: b, l: l, bk: bk, o: o,
		free: make(chan []byte, o.Concurrency+1), sem: make(chan struct{}, o.Concurrency)}
}

func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *writer) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

// getBuf returns an empty part buffer, waiting for an upload to finish when
// all of them are in flight.
func (w *writer) getBuf() []byte {
	select {
	case b := <-w.free:
		return b[:0]
	default:
	}
	if w.made < w.o.Concurrency+1 {
		w.made++
		return make([]byte, 0, w.o.PartSize)
	}
	return (<-w.free)[:0]
}

func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("write %s: writer already committed or aborted", w.l)
	}
	if err := w.failed(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = w.getBuf()
		}
		c := copy(w.buf[len(w.buf):w.o.PartSize], p)
		w.buf = w.buf[:len(w.buf)+c]
		p = p[c:]
		n += c
		w.total += int64(c)
		if len(w.buf) == w.o.PartSize && len(p) > 0 {
			// Only a full buffer with more data behind it becomes a part,
			// so an object of exactly one part is still a single PUT.
			if err := w.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flush starts uploading the current buffer as the next part.
func (w *writer) flush() error {
	if w.uploadID == "" {
		err := w.o.Retry.do(w.ctx, func() (err error) {
			if w.meta != nil {
				w.uploadID, err = w.bk.(MetaBucket).CreateMultipartMeta(w.ctx, w.l.Key, w.meta)
			} else {
				w.uploadID, err = w.bk.CreateMultipart(w.ctx, w.l.Key)
			}
			return err
		})
		if err != nil {
			err = w.b.wrap("create", w.l, err)
			w.fail(err)
			return err
		}
	}
	w.next++
	if w.next > w.o.MaxParts {
		err := &Error{Op: "write", Loc: w.l.String(), Bucket: w.l.Bucket, Key: w.l.Key, Kind: KindPermanent,
			Hint: fmt.Sprintf("object larger than %d parts of %d bytes; raise the part size", w.o.MaxParts, w.o.PartSize)}
		w.fail(err)
		return err
	}
	num, body, id := w.next, w.buf, w.uploadID
	w.buf = nil
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		w.fail(w.ctx.Err())
		return w.ctx.Err()
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem; w.free <- body }()
		if w.failed() != nil {
			return
		}
		var etag string
		err := w.o.Retry.do(w.ctx, func() (err error) {
			etag, err = w.bk.UploadPart(w.ctx, w.l.Key, id, num, body)
			return err
		})
		if err != nil {
			w.fail(w.b.wrap(fmt.Sprintf("upload part %d of", num), w.l, err))
			return
		}
		w.mu.Lock()
		w.parts = append(w.parts, Part{Num: num, ETag: etag})
		w.mu.Unlock()
	}()
	return nil
}

// Commit makes the object visible under its key, replacing any earlier one.
func (w *writer) Commit() error {
	if w.done {
		return fmt.Errorf("commit %s: writer already committed or aborted", w.l)
	}
	if err := w.failed(); err != nil {
		_ = w.Abort()
		return err
	}
	w.done = true
	if w.uploadID == "" {
		body := w.buf
		if body == nil {
			body = []byte{}
		}
		err := w.o.Retry.do(w.ctx, func() error {
			if w.meta != nil {
				return w.bk.(MetaBucket).PutMeta(w.ctx, w.l.Key, body, w.meta)
			}
			return w.bk.Put(w.ctx, w.l.Key, body)
		})
		w.buf = nil
		if err != nil {
			return w.b.wrap("commit", w.l, err)
		}
		w.b.noteBucket(w.l.Bucket)
		return nil
	}
	if len(w.buf) > 0 {
		if err := w.flush(); err != nil {
			w.wg.Wait()
			w.abortUpload()
			return err
		}
	}
	w.wg.Wait()
	if err := w.failed(); err != nil {
		w.abortUpload()
		return err
	}
	sort.Slice(w.parts, func(i, j int) bool { return w.parts[i].Num < w.parts[j].Num })
	tries := 0
	err := w.o.Retry.do(w.ctx, func() error {
		tries++
		err := w.bk.CompleteMultipart(w.ctx, w.l.Key, w.uploadID, w.parts)
		if err != nil && tries > 1 && kindOf(err) == KindNotFound {
			// An earlier try completed the upload but its answer was lost:
			// the object is there if its size matches.
			if size, _, herr := w.bk.Head(w.ctx, w.l.Key); herr == nil && size == w.total {
				return nil
			}
		}
		return err
	})
	w.free = nil
	if err != nil {
		w.abortUpload()
		return w.b.wrap("commit", w.l, err)
	}
	w.uploadID = ""
	w.b.noteBucket(w.l.Bucket)
	return nil
}

// Abort drops the pending object; nothing was or becomes visible.
func (w *writer) Abort() error {
	if w.done && w.uploadID == "" {
		return nil
	}
	w.done = true
	w.fail(errors.New("aborted"))
	w.wg.Wait()
	w.buf = nil
	return w.abortUpload()
}

func (w *writer) abortUpload() error {
	if w.uploadID == "" {
		return nil
	}
	id := w.uploadID
	w.uploadID = ""
	// Abort even when the caller's context is cancelled, so a failed
	// bundle does not leave parts billed until a lifecycle rule runs.
	ctx := context.WithoutCancel(w.ctx)
	err := w.o.Retry.do(ctx, func() error { return w.bk.AbortMultipart(ctx, w.l.Key, id) })
	if err != nil && kindOf(err) != KindNotFound {
		return w.b.wrap("abort", w.l, err)
	}
	return nil
}
