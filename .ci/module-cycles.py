#!/usr/bin/env python3
"""No import cycles between the files of src/: each file is a module; an edge is a `use` or a
path through `crate::` / `super::`, resolved to the file that defines it. Prints every cycle
and exits 1 when there is one. Run from the repository root (.ci/run does)."""
import re,glob,os,sys
root='src'
def modpath(p):
    r=os.path.relpath(p,root)[:-3].split('/')
    if r[-1]=='mod': r=r[:-1]
    if r==['lib'] or r==['main']: return []
    return r
files={tuple(modpath(p)):p for p in glob.glob(root+'/**/*.rs',recursive=True) if not p.endswith('main.rs')}
def resolve(parts):
    for n in range(len(parts),-1,-1):
        if tuple(parts[:n]) in files: return tuple(parts[:n])
    return None
def expand_use(text):
    # expand `use a::{b, c::{d}}` groups into paths
    out=[]
    def rec(prefix, s):
        s=s.strip()
        if not s: return
        m=re.match(r'^([\w:]*?)(::)?\{(.*)\}$',s,re.S)
        if m and m.group(3) is not None and s.endswith('}'):
            pre=m.group(1)
            inner=m.group(3)
            depth=0;start=0;items=[]
            for i,ch in enumerate(inner):
                if ch=='{':depth+=1
                elif ch=='}':depth-=1
                elif ch==',' and depth==0: items.append(inner[start:i]); start=i+1
            items.append(inner[start:])
            for it in items: rec(prefix+([pre] if pre else []), it)
        else:
            out.append('::'.join(prefix+[s.split(' as ')[0].strip()]))
    rec([],text)
    return out
deps={}
for mp,p in files.items():
    s=open(p).read()
    s=re.sub(r'//[^\n]*','',s)
    # strip test modules
    i=s.find('#[cfg(test)]\nmod tests')
    if i>=0: s=s[:i]
    paths=[]
    for m in re.finditer(r'\buse\s+([^;]+);',s):
        paths+=expand_use(m.group(1).replace('\n',' '))
    paths+=re.findall(r'\b((?:crate|super)(?:::\w+)+)',s)
    d=set()
    for path in paths:
        parts=path.replace(' ','').split('::')
        if parts[0]=='crate': abs_=parts[1:]
        elif parts[0]=='super':
            base=list(mp)
            # file module: super = parent module
            while parts and parts[0]=='super':
                base=base[:-1]; parts=parts[1:]
            abs_=base+parts
        elif parts[0]=='self': abs_=list(mp)+parts[1:]
        else: continue
        r=resolve(abs_)
        if r is not None and r!=mp and not (len(r)<len(mp) and mp[:len(r)]==r and len(abs_)==len(r)):
            d.add(r)
    deps[mp]=d
# find cycles (SCCs)
idx={};low={};st=[];on=set();sccs=[];c=[0]
sys.setrecursionlimit(10000)
def strong(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in deps.get(v,()):
        if w not in idx: strong(w); low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
for v in deps:
    if v not in idx: strong(v)
for comp in sccs:
    print('CYCLE:',[ '::'.join(x) or 'crate' for x in comp])
    for a in comp:
        for b in deps[a]:
            if b in comp: print('   ','::'.join(a) or 'crate','->','::'.join(b) or 'crate')
print(f"module cycles: {len(files)} files, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
