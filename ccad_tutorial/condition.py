"""CCAD's condition: the bank of normal features -> the tokens every GCB cross-attends to.

``ConditionMixin`` holds the methods of ``model.CCAD`` that build the condition; CCAD
inherits them, so the chapters show them as ``CCAD.context``, ``CCAD.condition``, ...
They decide which bank entries an image gets (``bank_mode``: all of them, its nearest, or
its category's) and turn them into tokens (the FCM for variant F, a projection for V and
C, the learned null token for "no condition"). The buffers and modules they read
(``bank``, ``bank_labels``, ``fcm``, ``proj``, ``null_token``, ``extractor``) are made in
``CCAD.__init__`` (model.py); the GCB that reads the tokens is gcb.py's.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ConditionMixin:
    """The condition part of ``model.CCAD`` (see the module docstring)."""

    def context(
        self,
        batch_size: int,
        bank: Tensor | None = None,
        query: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The tokens every GCB cross-attends to, (B, T, ctx_dim).

        ``bank`` (M, D) replaces the run's CFB (the condition swap): in bank_mode "shared"
        and "category" it is the whole condition of every image (a category's bank given in
        place of the one the image would get), in "retrieved" the entries are retrieved from
        it. ``query`` (B, D) holds the inputs' global features (bank_mode "retrieved" and
        "category"); ``labels`` (B,) the inputs' category indices (bank_mode="category";
        known in training, chosen by ``query`` otherwise).
        """
        if self.cfg.variant == "uncond":
            return self.null_context(batch_size)  # (B, 1, ctx)
        if self.cfg.bank_mode == "retrieved":
            tokens = self.retrieve(self.bank if bank is None else bank.to(self.bank), query)
        elif bank is not None:
            tokens = bank.to(self.bank).unsqueeze(0).expand(batch_size, -1, -1)
        elif self.cfg.bank_mode == "category":
            labels = self.assign_category(query) if labels is None else labels
            tokens = self.category_tokens(labels.to(self.bank.device))  # (B, M_c, D)
        else:
            tokens = self.bank.unsqueeze(0).expand(batch_size, -1, -1)  # (B, M, D): shared
        return self.condition(tokens)

    def condition(self, tokens: Tensor) -> Tensor:
        """Bank vectors (B, M, D) -> context (B, T, ctx_dim).

        Variant F reads the bank with the FCM, C projects each vector (LayerNorm + Linear).
        """
        return self.fcm(tokens) if self.cfg.variant == "F" else self.proj(tokens)

    def null_context(self, batch_size: int, length: int = 1) -> Tensor:
        """The learned null token as a context (B, length, ctx_dim): "no condition".

        Attention over ``length`` copies of one token equals attention over that one token,
        so a dropped condition can share a batch with bank contexts of any length.
        """
        return self.null_token.unsqueeze(0).expand(batch_size, length, -1)

    def retrieve(self, bank: Tensor, query: Tensor) -> Tensor:
        """The k bank entries nearest to each query: bank (M, D), query (B, D) -> (B, k, D).

        Only the NEIGHBOURS enter the condition, never the input's own feature (that would
        leak the anomaly). An entry identical to the query (a training image that is in the
        bank itself) is skipped, so training sees what testing sees.
        """
        if query is None:
            raise ValueError('bank_mode="retrieved" needs the inputs\' global features (query).')
        dist = torch.cdist(query.to(bank), bank)  # (B, M)
        dist = dist.masked_fill(dist < 1e-6, float("inf"))
        k = min(self.cfg.retrieve_k, bank.shape[0] - 1)
        idx = dist.topk(k, largest=False).indices  # (B, k)
        return bank[idx]

    def assign_category(self, query: Tensor | None) -> Tensor:
        """(B,) the category of the bank entry nearest to each query (B, D).

        At test time the category is unknown: the input's global feature picks the category
        whose CFB holds its nearest normal feature (``category_error`` says how often wrongly).
        """
        if query is None:
            raise ValueError('bank_mode="category" needs the inputs\' global features (query).')
        nearest = torch.cdist(query.to(self.bank), self.bank).argmin(1)  # (B,)
        return self.bank_labels[nearest]

    def category_tokens(self, labels: Tensor) -> Tensor:
        """The whole CFB of each input's category: labels (B,) -> (B, M_c, D).

        Categories with fewer entries repeat theirs cyclically up to the largest count (the
        attention weights of a repeated set are those of the set, up to the repetition).
        """
        size = int(torch.bincount(self.bank_labels).max())
        banks = []
        for c in labels.tolist():
            rows = torch.nonzero(self.bank_labels == c).flatten()
            if len(rows) == 0:
                raise ValueError(f"bank_mode='category': the bank has no entry of category {c}.")
            banks.append(self.bank[rows[torch.arange(size, device=rows.device) % len(rows)]])
        return torch.stack(banks)

    @torch.no_grad()
    def global_features(self, images: Tensor) -> Tensor | None:
        """The retrieval query (B, D) of images (B, 3, H, W); None in bank_mode="shared"."""
        return None if self.extractor is None else self.extractor(images)
