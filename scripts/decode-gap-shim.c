/*
 * Preloaded into llama-server by scripts/bench-gap.ts (--llama-server): wraps llama.cpp's llama_decode and
 * records, for one-token batches, the time each call takes and the time from the end of one to the start
 * of the next (under 50 ms apart: the same generation). Written as JSON to $GAP_OUT when the process exits.
 */
#define _GNU_SOURCE
#include "llama.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now_ms(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
#define MAXN 200000
static double gaps[MAXN], calls[MAXN]; static int ng, nc; static double last_end;
typedef int32_t (*dec_t)(struct llama_context*, struct llama_batch);
static dec_t real;
int32_t llama_decode(struct llama_context *ctx, struct llama_batch b){
  if(!real) real=(dec_t)dlsym(RTLD_NEXT,"llama_decode");
  double t0=now_ms();
  int one = b.n_tokens==1;
  if(one && last_end && t0-last_end<50 && ng<MAXN) gaps[ng++]=t0-last_end;
  int32_t r=real(ctx,b);
  double t1=now_ms();
  if(one){ if(nc<MAXN) calls[nc++]=t1-t0; last_end=t1; } else last_end=0;
  return r;
}
__attribute__((destructor)) static void dump(void){
  const char*p=getenv("GAP_OUT"); if(!p) return; FILE*f=fopen(p,"w"); if(!f) return;
  fprintf(f,"{\"gaps\":["); for(int i=0;i<ng;i++) fprintf(f,"%s%.4f",i?",":"",gaps[i]);
  fprintf(f,"],\"calls\":["); for(int i=0;i<nc;i++) fprintf(f,"%s%.4f",i?",":"",calls[i]);
  fprintf(f,"]}\n"); fclose(f);
}
