"""Exploratory probe of slice classification on the phantom, NOT part of bonemet.

It asks whether a slice classifier can learn the phantom's metastatic slices at a CPU budget when
the input and the model are shaped for small findings: every slice cropped to the body's bounding
box, a 0.29 M-parameter plain CNN without stem downsampling ("my16") and global max pooling,
plain cross-entropy, AdamW, balanced batches of 16, flips (and rotations with ROT=degrees).
Patient-level split (25 % of each status held out, seed 0). Results are in
docs/classification-phantom.md. Run from the repository root, for example:

    bonemet data synth runs/exp/phantom-cls48m --patients 48 --seed 3 --size 256 \
        --formats classification,volumes --window multi
    CROP=1 POOL=max ROT=35 WD=1e-4 STEPS=600 EV=150 \
        python docs/experiments/cls_probe.py runs/exp/phantom-cls48m 192 my16 0

Arguments: data root(s, comma-separated), input size, model (``myW`` = the plain CNN of width W,
or a timm name), time budget in seconds (used when STEPS is 0). Environment: CROP, POOL (avg/max),
ROT, WD, LR, BS, AUG, STEPS, EV (evaluate every EV steps), T (threads), CACHE (folder for the
decoded-slice cache).
"""
import sys, time, glob, os, tempfile, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
import timm
torch.set_num_threads(int(os.environ.get("T","2")))
roots = sys.argv[1].split(","); size = int(sys.argv[2]); model_name = sys.argv[3]; budget = float(sys.argv[4])
crop = os.environ.get("CROP","0")=="1"; pool=os.environ.get("POOL","avg"); chan=os.environ.get("CH","all")
Xs,ys,ps=[],[],[]
for root in roots:
    cache = os.path.join(os.environ.get("CACHE", tempfile.gettempdir()), f"bonemet_probe_{os.path.basename(root)}.npz")
    if os.path.exists(cache):
        d=np.load(cache); X,y,pat=d["X"],d["y"],d["pat"]
    else:
        files=sorted(glob.glob(f"{root}/classification/**/*.png",recursive=True))
        X=np.stack([np.array(Image.open(f)) for f in files])
        y=np.array([1 if "/metastatic/" in f else 0 for f in files]); pat=np.array([os.path.basename(root)+os.path.basename(f).split("_")[0] for f in files])
        np.savez(cache,X=X,y=y,pat=pat)
    Xs.append(X);ys.append(y);ps.append(pat)
X=np.concatenate(Xs);y=np.concatenate(ys);pat=np.concatenate(ps);del Xs
if X.ndim==3: X=X[...,None].repeat(3,-1)
if chan!="all": X=X[...,[int(chan)]].repeat(3,-1)
pats=sorted(set(pat)); status={p:int(y[pat==p].max()) for p in pats}
rng=np.random.default_rng(0)
pos=[p for p in pats if status[p]]; neg=[p for p in pats if not status[p]]
rng.shuffle(pos); rng.shuffle(neg)
nt=max(1,round(len(pos)*0.25)); test=set(pos[:nt]+neg[:nt])
tr=np.array([p not in test for p in pat]); te=~tr
print("patients", len(pats), "test", sorted(test), "train slices", tr.sum(), "pos", y[tr].sum(), "test slices", te.sum(), "pos", y[te].sum())
def prep(chunk):
    T=torch.from_numpy(chunk).permute(0,3,1,2).float().div(255)
    if not crop: return F.interpolate(T,size=(size,size),mode="area")
    out=[]
    for im in T:
        m=(im.max(0).values>0.05)
        r=torch.where(m.any(1))[0]; c=torch.where(m.any(0))[0]
        r0,r1,c0,c1=r[0].item(),r[-1].item()+1,c[0].item(),c[-1].item()+1
        h,w=r1-r0,c1-c0; s_=max(h,w); cy,cx=(r0+r1)//2,(c0+c1)//2
        r0=max(0,cy-s_//2); c0=max(0,cx-s_//2)
        out.append(F.interpolate(im[None,:,r0:r0+s_,c0:c0+s_],size=(size,size),mode="area")[0])
    return torch.stack(out)
T=torch.cat([prep(X[i:i+256]).mul(255).round().to(torch.uint8) for i in range(0,len(X),256)])
del X
norm=lambda t:(t.float()/255-0.5)/0.25
model=timm.create_model(model_name,num_classes=2,in_chans=3,global_pool=pool) if not model_name.startswith("my") else None
if model is None:
    w=int(model_name[2:] or 16)
    def blk(i,o): return nn.Sequential(nn.Conv2d(i,o,3,padding=1,bias=False),nn.BatchNorm2d(o),nn.ReLU(inplace=True),nn.Conv2d(o,o,3,padding=1,bias=False),nn.BatchNorm2d(o),nn.ReLU(inplace=True))
    model=nn.Sequential(blk(3,w),nn.MaxPool2d(2),blk(w,2*w),nn.MaxPool2d(2),blk(2*w,4*w),nn.MaxPool2d(2),blk(4*w,8*w),
        nn.AdaptiveMaxPool2d(1) if pool=="max" else nn.AdaptiveAvgPool2d(1),nn.Flatten(),nn.Linear(8*w,2))
print("params", sum(p.numel() for p in model.parameters())/1e6)
opt=torch.optim.AdamW(model.parameters(),lr=float(os.environ.get("LR","1e-3")),weight_decay=float(os.environ.get("WD","0")))
Xtr,ytr=T[tr],torch.from_numpy(y[tr]); Xte,yte=T[te],y[te]
pi=torch.where(ytr==1)[0]; ni=torch.where(ytr==0)[0]
def evaluate(Xs):
    model.eval(); ps=[]
    with torch.no_grad():
        for i in range(0,len(Xs),64): ps.append(torch.softmax(model(norm(Xs[i:i+64])),1)[:,1])
    model.train(); return torch.cat(ps).numpy()
t0=time.time(); step=0; bs=int(os.environ.get("BS","16")); aug=os.environ.get("AUG","1")=="1"
sub_tr=torch.cat([pi,ni[torch.randperm(len(ni))[:len(pi)]]])
steps=int(os.environ.get("STEPS","0"))
while (time.time()-t0<budget) if not steps else (step<steps):
    idx=torch.cat([pi[torch.randint(len(pi),(bs//2,))],ni[torch.randint(len(ni),(bs//2,))]])
    xb=norm(Xtr[idx]); yb=ytr[idx]
    if aug:
        if np.random.rand()<0.5: xb=xb.flip(3)
        if os.environ.get("ROT","0")!="0":
            ang=(torch.rand(len(xb))*2-1)*float(os.environ["ROT"])*np.pi/180
            c,s_=torch.cos(ang),torch.sin(ang)
            theta=torch.stack([torch.stack([c,-s_,torch.zeros_like(c)],1),torch.stack([s_,c,torch.zeros_like(c)],1)],1)
            grid=F.affine_grid(theta,xb.shape,align_corners=False)
            xb=F.grid_sample(xb,grid,align_corners=False,padding_mode="border")
    loss=F.cross_entropy(model(xb),yb); opt.zero_grad(); loss.backward(); opt.step(); step+=1
    if step%int(os.environ.get("EV","200"))==0:
        p=evaluate(Xte); ptr=evaluate(Xtr[sub_tr])
        print(f"{time.time()-t0:.0f}s step {step} loss {loss.item():.3f} test AUC {roc_auc_score(yte,p):.3f} train AUC {roc_auc_score(ytr[sub_tr].numpy(),ptr):.3f}",flush=True)
p=evaluate(Xte); print("final test AUC", roc_auc_score(yte,p), "steps", step)
