package amqp

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
)

// py-amqp (the client under Celery/kombu) encodes a Python int outside the 32-bit range as
// field type 'L' with a signed 64-bit value; RabbitMQ passes message headers through
// untouched, and amqp091-go knows only 'l' for that: it fails the whole connection with a
// frame error. A single such header would then make every Go worker lose its connection
// on each redelivery. fieldFixConn rewrites 'L' to 'l' (same width, same signed value) in
// the application headers of every content header frame the server sends.

const (
	frameHeader   = 2 // AMQP frame type of a content header
	frameEnd      = 0xCE
	classBasic    = 60
	flagType      = 0x8000 // content-type present
	flagEncoding  = 0x4000 // content-encoding present
	flagHeaders   = 0x2000 // headers present
	maxFieldDepth = 64
)

// fieldFixConn is a net.Conn whose reads carry whole, patched server frames.
type fieldFixConn struct {
	net.Conn
	r       *bufio.Reader
	frame   []byte // the current frame; out is its unread rest
	out     []byte
	started bool
	raw     bool // the server answered with a protocol header: pass bytes through
}

func newFieldFixConn(c net.Conn) *fieldFixConn {
	return &fieldFixConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}
}

func (c *fieldFixConn) Read(p []byte) (int, error) {
	if c.raw {
		return c.r.Read(p)
	}
	if len(c.out) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
		if c.raw {
			return c.r.Read(p)
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// next reads one frame into c.out, patching it if it is a content header.
func (c *fieldFixConn) next() error {
	if !c.started {
		c.started = true
		b, err := c.r.Peek(1)
		if err != nil {
			return err
		}
		if b[0] == 'A' { // "AMQP…": protocol version mismatch, not a frame
			c.raw = true
			return nil
		}
	}
	var h [7]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return err
	}
	size := int(binary.BigEndian.Uint32(h[3:7]))
	total := len(h) + size + 1
	if cap(c.frame) < total {
		c.frame = make([]byte, total)
	}
	f := c.frame[:total]
	copy(f, h[:])
	if _, err := io.ReadFull(c.r, f[len(h):]); err != nil {
		return err
	}
	if h[0] == frameHeader && f[total-1] == frameEnd {
		fixContentHeader(f[len(h) : total-1])
	}
	c.out = f
	return nil
}

// fixContentHeader patches the headers table of a basic content header payload in place.
func fixContentHeader(p []byte) {
	// class-id(2) weight(2) body-size(8) property-flags(2)
	if len(p) < 14 || binary.BigEndian.Uint16(p[0:2]) != classBasic {
		return
	}
	flags := binary.BigEndian.Uint16(p[12:14])
	i := 14
	for _, f := range []uint16{flagType, flagEncoding} {
		if flags&f != 0 {
			if i >= len(p) {
				return
			}
			i += 1 + int(p[i])
		}
	}
	if flags&flagHeaders == 0 || i > len(p) {
		return
	}
	fixTable(p[i:], 0)
}

// fixTable walks a field table (with its 4-byte length) and returns its encoded size, or
// -1 if it is malformed (then the rest is left alone for the library to reject).
func fixTable(p []byte, depth int) int {
	if depth > maxFieldDepth || len(p) < 4 {
		return -1
	}
	n := int(binary.BigEndian.Uint32(p[0:4]))
	if n > len(p)-4 {
		return -1
	}
	t := p[4 : 4+n]
	for i := 0; i < len(t); {
		i += 1 + int(t[i]) // field name
		if i >= len(t) {
			return -1
		}
		w := fixValue(t[i:], depth)
		if w < 0 {
			return -1
		}
		i += w
	}
	return 4 + n
}

// fixArray walks a field array (with its 4-byte length) like fixTable.
func fixArray(p []byte, depth int) int {
	if depth > maxFieldDepth || len(p) < 4 {
		return -1
	}
	n := int(binary.BigEndian.Uint32(p[0:4]))
	if n > len(p)-4 {
		return -1
	}
	a := p[4 : 4+n]
	for i := 0; i < len(a); {
		w := fixValue(a[i:], depth)
		if w < 0 {
			return -1
		}
		i += w
	}
	return 4 + n
}

// fixValue patches one typed value (type octet first) and returns its encoded size.
func fixValue(p []byte, depth int) int {
	if len(p) == 0 {
		return -1
	}
	var w int
	switch p[0] {
	case 'V':
		w = 0
	case 't', 'b', 'B':
		w = 1
	case 's', 'u':
		w = 2
	case 'I', 'i', 'f':
		w = 4
	case 'D':
		w = 5
	case 'l', 'L', 'd', 'T':
		w = 8
	case 'S', 'x':
		if len(p) < 5 {
			return -1
		}
		w = 4 + int(binary.BigEndian.Uint32(p[1:5]))
	case 'A':
		w = fixArray(p[1:], depth+1)
	case 'F':
		w = fixTable(p[1:], depth+1)
	default:
		return -1
	}
	if w < 0 || 1+w > len(p) {
		return -1
	}
	if p[0] == 'L' {
		p[0] = 'l'
	}
	return 1 + w
}
