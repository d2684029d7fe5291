package takeover

import (
	"encoding/json"
	"net"
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// pair returns two connected SOCK_SEQPACKET unix sockets, as the holder
// and a daemon have.
func pair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatalf("file conn: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestMessageRoundTrip: a message and its fd arrive as sent.
func TestMessageRoundTrip(t *testing.T) {
	a, b := pair(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := message{Op: opHave, PID: 42, Init: &Init{Request: []byte{1, 2, 3}, Reply: []byte{4, 5}, Generation: 0x1234abcd, Ref: "r/app@sha256:00"}}
	if err := send(a, want, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	got, fd, err := recv(b)
	if err != nil {
		t.Fatal(err)
	}
	if fd < 0 {
		t.Fatal("recv: no fd came with the message")
	}
	defer unix.Close(fd)
	var st1, st2 unix.Stat_t
	if err := unix.Fstat(fd, &st1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(f.Fd()), &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino || st1.Dev != st2.Dev {
		t.Errorf("the fd received is not the file sent")
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("recv = %+v, want %+v", got, want)
	}
}

// TestUpgradeNoHolder: upgrading with no holder listening says where it
// looked.
func TestUpgradeNoHolder(t *testing.T) {
	sock := t.TempDir() + "/none.sock"
	if _, err := Upgrade(sock); err == nil {
		t.Fatalf("Upgrade(%s) with no holder succeeded", sock)
	}
}

// FuzzRecv feeds recv arbitrary packets: it returns a message or an error,
// never panics, and a message it returns survives a round trip.
func FuzzRecv(f *testing.F) {
	for _, m := range []message{
		{Op: opGet, PID: 1},
		{Op: opHave, Init: &Init{Request: make([]byte, 104), Reply: make([]byte, 80), Generation: 7, Ref: "oci:/x@sha256:ab"}},
		{Op: opError, Err: "no"},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"init","init":{"request":"!!"}}`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxMessage {
			return
		}
		a, c := pair(t)
		if len(b) == 0 {
			return // a zero-length packet reads as the peer gone
		}
		if _, err := a.Write(b); err != nil {
			t.Skip(err)
		}
		m, fd, err := recv(c)
		if fd >= 0 {
			t.Errorf("recv returned fd %d for a packet without one", fd)
			unix.Close(fd)
		}
		if err != nil {
			return
		}
		if err := send(a, m, -1); err != nil {
			t.Fatal(err)
		}
		again, _, err := recv(c)
		if err != nil {
			t.Fatalf("recv of a re-sent message: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Errorf("round trip: %+v, then %+v", m, again)
		}
	})
}
