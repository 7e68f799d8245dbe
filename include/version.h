#ifndef RELAY_VERSION_H
#define RELAY_VERSION_H
#define RELAY_VERSION "0.1.0"

/* Exit codes shared by relayd and relayctl (documented in their man pages). */
#define EXIT_USAGE    2   /* bad command line */
#define EXIT_CONFIG   3   /* the config file is invalid */
#define EXIT_START    4   /* cannot start: spool, socket, lock, permissions */
/* 5 = RELAY_EXIT_IO (committer.h): an I/O error in a commit */
#endif
