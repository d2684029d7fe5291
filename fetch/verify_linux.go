package fetch

import (
	"fmt"
	"os"
	"syscall"
)

// fileIdentity names f's inode and the times that any change to it moves:
// a write or truncation moves mtime and ctime, and ctime cannot be set back
// from user space.
func fileIdentity(f *os.File) string {
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("dev %d ino %d size %d mtime %d.%09d ctime %d.%09d\n",
		st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
}
